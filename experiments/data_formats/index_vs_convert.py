"""Index a TFRecord shard vs convert it to array_record; random reads from each.

  python experiments/data_formats/index_vs_convert.py ROOT   (ROOT: data_bench --jpeg_dir)
"""
import glob, os, time, numpy as np, tempfile
from cnn_jax.data.sources import tfrecord
from array_record.python.array_record_module import ArrayRecordWriter, ArrayRecordReader
import sys
# The tfrecord train shard data_bench --formats=tfrecord writes under --jpeg_dir (ROOT/tfds/...).
shard = glob.glob(f"{sys.argv[1]}/tfds/cnn_jax_bench_jpegs/1.0.0/*-train.tfrecord-*")[0]
size = os.path.getsize(shard)
res = {"index": [], "convert": [], "read_tfrecord": [], "read_array_record": []}
d = tempfile.mkdtemp()
for r in range(3):
  s = time.perf_counter(); rows = tfrecord._scan(shard); res["index"].append(time.perf_counter() - s)
  reader = tfrecord.TFRecordReader([(shard, 0, len(rows))], d, progress=False)
  s = time.perf_counter()
  out = os.path.join(d, f"x{r}.array_record")
  w = ArrayRecordWriter(out, "group_size:1")
  for i in range(len(reader)): w.write(reader[i])
  w.close(); res["convert"].append(time.perf_counter() - s)
  perm = np.random.default_rng(r).permutation(len(rows))
  s = time.perf_counter()
  for i in perm: tfrecord.parse_example(reader[int(i)], "image", "label")
  res["read_tfrecord"].append((time.perf_counter() - s) / len(perm))
  ar = ArrayRecordReader(out)
  s = time.perf_counter()
  for i in perm: tfrecord.parse_example(ar.read([int(i)])[0], "image", "label")
  res["read_array_record"].append((time.perf_counter() - s) / len(perm))
print(f"shard {size/1e6:.1f} MB, {len(rows)} records")
for k, v in res.items():
  m = float(np.median(v))
  print(k, f"{m*1e3:.3f} ms" + (f" per record" if k.startswith("read") else f" ({size/1e6/m:.0f} MB/s)"))
