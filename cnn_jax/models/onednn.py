"""oneDNN's convolutions and batched matmuls inside XLA programs on CPU: the kernels PyTorch runs
its CPU convs and matmuls on, called from a jitted step as XLA FFI custom calls; the conv with a
custom gradient of two more calls.

XLA:CPU runs dense convs of few channels (ResNet's 3x3 at 16-64 channels) through Eigen at a
fraction of oneDNN's rate, and no exact rewrite in XLA ops closed that gap; oneDNN's depthwise
convs also beat `cpu_ops`' shifted multiply-adds (experiments/cpu_speed/README.md, stop 36).
`layers.conv_general_dilated` offers this form for float32 NHWC convs: under the "onednn" conv
impl, and to the autotune beside XLA's op and the `cpu_ops` form in a process with one device
(`may_autotune`). `layers.attention` offers a backward whose four batched dots are
`batched_matmul`'s the same way: XLA:CPU ran those (B x heads) small matmuls at 1.3-2x
oneDNN's time (experiments/cpu_speed/README.md, stop 38).

The handlers (csrc/onednn.cc) are compiled on first use with the C++ compiler ($CXX, else
c++) against the pinned oneDNN wheels (onednn-devel-cpu-gomp, onednn-cpu-gomp) and JAX's FFI
headers, into the cache directory, keyed by the source and the versions. Where it cannot be
built or loaded, `unavailable_reason` says why and the other forms run as before.
Environment: CNN_JAX_ONEDNN=0 leaves oneDNN out.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax import hostenv

ENV = "CNN_JAX_ONEDNN"
TARGET = "cnn_jax_onednn_conv"
MATMUL_TARGET = "cnn_jax_onednn_batched_matmul"
SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "onednn.cc")
HEADERS_DIST, LIBRARY_DIST = "onednn-devel-cpu-gomp", "onednn-cpu-gomp"
FORWARD, INPUT_GRADIENT, KERNEL_GRADIENT = 0, 1, 2  # The handler's `kind`.

Padding = tuple[tuple[int, int], tuple[int, int]]


class Unavailable(Exception):
  """oneDNN's form cannot run in this process; the message says why, in one line."""


def _dist_file(dist: str, suffix: str) -> str:
  try:
    files = importlib.metadata.files(dist) or []
  except importlib.metadata.PackageNotFoundError:
    raise Unavailable(f"the {dist} package is not installed (requirements.txt)") from None
  for f in files:  # Recorded relative to site-packages, e.g. ../../libdnnl.so.3.
    if f"/{f}".endswith(f"/{suffix}"):
      return os.path.normpath(str(f.locate()))
  raise Unavailable(f"the {dist} package has no {suffix}")


def library_path(source_path: str = SOURCE) -> str:
  """The handler compiled from `source_path` (a oneDNN + XLA FFI C++ file: this module's, or
  an experiment's) in the cache directory, built first if it is not there."""
  header = _dist_file(HEADERS_DIST, "oneapi/dnnl/dnnl.hpp")
  include = os.path.dirname(os.path.dirname(os.path.dirname(header)))
  libdnnl = _dist_file(LIBRARY_DIST, "libdnnl.so.3")
  with open(source_path, "rb") as f:
    source = f.read()
  versions = (f"jaxlib {importlib.metadata.version('jaxlib')} "
              f"{LIBRARY_DIST} {importlib.metadata.version(LIBRARY_DIST)}")
  digest = hashlib.sha256(source + versions.encode()).hexdigest()[:16]
  stem = os.path.splitext(os.path.basename(source_path))[0]
  target = os.path.join(hostenv.cache_dir(), "onednn", f"{stem}_{digest}.so")
  if os.path.exists(target):
    return target
  compiler = os.environ.get("CXX", "c++")
  if shutil.which(compiler) is None:
    raise Unavailable(f"no C++ compiler ({compiler!r}) to build {os.path.basename(source_path)}")
  os.makedirs(os.path.dirname(target), exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target), suffix=".so.tmp")
  os.close(fd)
  command = [compiler, "-O2", "-std=c++17", "-shared", "-fPIC", "-w",
             f"-I{jax.ffi.include_dir()}", f"-I{include}", source_path, libdnnl,
             f"-Wl,-rpath,{os.path.dirname(libdnnl)}", "-o", tmp]
  print(f"onednn: building {os.path.basename(source_path)} into {target} (once)",
        file=sys.stderr, flush=True)
  built = subprocess.run(command, capture_output=True, text=True)
  if built.returncode != 0:
    os.unlink(tmp)
    first = next((line for line in built.stderr.splitlines() if "error" in line),
                 built.stderr.strip()[:200])
    raise Unavailable(f"building {os.path.basename(source_path)} failed: {first}")
  os.replace(tmp, target)  # Processes building at once each rename a whole file.
  return target


_registered: list[ctypes.CDLL] = []  # The handlers' library, once registered in this process.


@functools.cache
def _register() -> str | None:
  """Builds, loads and registers the handlers, once per process (XLA refuses a second library
  under the same name): None, or why it cannot."""
  try:
    library = ctypes.cdll.LoadLibrary(library_path())
  except (Unavailable, OSError) as e:
    reason = (str(e) if isinstance(e, Unavailable)
              else f"the handler could not be built or loaded: {e}")
    print(f"onednn: not used ({reason}); the convs and the attention take XLA's ops or the "
          "CPU forms", file=sys.stderr, flush=True)
    return reason
  jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(library.CnnJaxOnednnConv),
                              platform="cpu")
  jax.ffi.register_ffi_target(MATMUL_TARGET,
                              jax.ffi.pycapsule(library.CnnJaxOnednnBatchedMatmul),
                              platform="cpu")
  _registered.append(library)
  return None


def unavailable_reason() -> str | None:
  """None where oneDNN's form can run here; otherwise why not, in one line."""
  if os.environ.get(ENV, "1") == "0":
    return f"turned off by {ENV}=0"
  return None if _registered else _register()


def applies(x: jax.Array, kernel: jax.Array) -> bool:
  """Whether the form takes this conv: float32 operands (whether the handler can be built is
  `unavailable_reason`)."""
  return x.dtype == kernel.dtype == jnp.float32


def may_autotune() -> bool:
  """Whether the autotune may time (and choose) the form in this process: one device, and the
  handler built. A custom call has no partitioning rule, so over many devices XLA runs it whole
  on each of them (the same values, not faster); "onednn" forces it there all the same."""
  return jax.device_count() == 1 and unavailable_reason() is None


def _call(kind: int, a: jax.Array, b: jax.Array, out_shape: tuple[int, ...], stride: int,
          padding: Padding, groups: int) -> jax.Array:
  (top, bottom), (left, right) = padding
  return jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct(out_shape, jnp.float32),
                          vmap_method="sequential")(
      a, b, kind=np.int64(kind), stride_h=np.int64(stride), stride_w=np.int64(stride),
      pad_top=np.int64(top), pad_bottom=np.int64(bottom), pad_left=np.int64(left),
      pad_right=np.int64(right), groups=np.int64(groups))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding,
         groups: int = 1) -> jax.Array:
  """`lax.conv_general_dilated(x, kernel, (stride, stride), padding,
  feature_group_count=groups)` for NHWC x and an HWIO kernel, float32, computed by oneDNN; its
  gradients are oneDNN's too."""
  reason = unavailable_reason()
  if reason is not None:
    raise Unavailable(f"oneDNN's conv cannot run here: {reason}")
  n, h, w, _ = x.shape
  kh, kw, _, out_channels = kernel.shape
  (top, bottom), (left, right) = padding
  out_shape = (n, (h + top + bottom - kh) // stride + 1, (w + left + right - kw) // stride + 1,
               out_channels)
  return _call(FORWARD, x, kernel, out_shape, stride, padding, groups)


def _conv_fwd(x, kernel, stride, padding, groups):
  return conv(x, kernel, stride, padding, groups), (x, kernel)


def _conv_bwd(stride, padding, groups, residuals, dy):
  x, kernel = residuals
  return (_call(INPUT_GRADIENT, dy, kernel, x.shape, stride, padding, groups),
          _call(KERNEL_GRADIENT, x, dy, kernel.shape, stride, padding, groups))


conv.defvjp(_conv_fwd, _conv_bwd)


def batched_matmul(a: jax.Array, b: jax.Array, transpose_a: bool = False,
                   transpose_b: bool = False) -> jax.Array:
  """op(a) @ op(b) over the leading axes (equal in a and b), float32, computed by oneDNN; op
  swaps the last two axes where asked, without a copy. Differentiated only inside a custom
  gradient (`layers.attention`'s)."""
  reason = unavailable_reason()
  if reason is not None:
    raise Unavailable(f"oneDNN's matmul cannot run here: {reason}")
  lead = a.shape[:-2]
  a3, b3 = a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:])
  rows = a3.shape[2] if transpose_a else a3.shape[1]
  cols = b3.shape[1] if transpose_b else b3.shape[2]
  out = jax.ffi.ffi_call(MATMUL_TARGET, jax.ShapeDtypeStruct((a3.shape[0], rows, cols),
                                                             jnp.float32),
                         vmap_method="sequential")(
      a3, b3, transpose_a=np.int64(transpose_a), transpose_b=np.int64(transpose_b))
  return out.reshape(*lead, rows, cols)
