"""Index a TFRecord shard vs convert it to array_record; random reads from each.

  python experiments/data_formats/index_vs_convert.py ROOT   (ROOT: data_bench --jpeg_dir)

Three rounds of: index the shard (cnn_jax's record scan), copy its records into an array_record
file, parse every record in a random order from each. Prints the medians.
"""

import glob
import os
import sys
import tempfile
import time

import numpy as np
from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from cnn_jax.data.sources import tfrecord  # noqa: E402


def main() -> None:
  # The tfrecord train shard data_bench --formats=tfrecord writes under --jpeg_dir.
  shards = glob.glob(f"{sys.argv[1]}/tfds/cnn_jax_bench_jpegs/1.0.0/*-train.tfrecord-*")
  if not shards:
    sys.exit(f"error: no train tfrecord shard under {sys.argv[1]}/tfds (run data_bench "
             "--formats=tfrecord --jpeg_dir ROOT first)")
  shard = shards[0]
  size = os.path.getsize(shard)
  times = {"index": [], "convert": [], "read_tfrecord": [], "read_array_record": []}
  workdir = tempfile.mkdtemp()
  for round_index in range(3):
    start = time.perf_counter()
    rows = tfrecord._scan(shard)  # pylint: disable=protected-access
    times["index"].append(time.perf_counter() - start)
    reader = tfrecord.TFRecordReader([(shard, 0, len(rows))], workdir, progress=False)
    start = time.perf_counter()
    converted = os.path.join(workdir, f"x{round_index}.array_record")
    writer = ArrayRecordWriter(converted, "group_size:1")
    for i in range(len(reader)):
      writer.write(reader[i])
    writer.close()
    times["convert"].append(time.perf_counter() - start)
    order = np.random.default_rng(round_index).permutation(len(rows))
    start = time.perf_counter()
    for i in order:
      tfrecord.parse_example(reader[int(i)], "image", "label")
    times["read_tfrecord"].append((time.perf_counter() - start) / len(order))
    array_reader = ArrayRecordReader(converted)
    start = time.perf_counter()
    for i in order:
      tfrecord.parse_example(array_reader.read([int(i)])[0], "image", "label")
    times["read_array_record"].append((time.perf_counter() - start) / len(order))
  print(f"shard {size / 1e6:.1f} MB, {len(rows)} records")
  for key, values in times.items():
    median = float(np.median(values))
    print(key, f"{median * 1e3:.3f} ms" + (" per record" if key.startswith("read")
                                          else f" ({size / 1e6 / median:.0f} MB/s)"))


if __name__ == "__main__":
  main()
