// XLA FFI handlers that run ops through oneDNN, the library PyTorch runs its CPU convolutions
// and matmuls on:
//  - CnnJaxOnednnConv: a 2-D float32 convolution (dense, grouped or depthwise): the forward
//    (x, w -> y), the input gradient (dy, w -> dx) or the kernel gradient (x, dy -> dw), with
//    NHWC activations and HWIO kernels, as XLA lays them out;
//  - CnnJaxOnednnBatchedMatmul: c[i] = op(a[i]) @ op(b[i]) over a leading batch axis, float32,
//    op a transpose where asked, read in place through its strides.
// cnn_jax/models/onednn.py builds them, registers them and gives the conv a custom gradient.
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dims = dnnl::memory::dims;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

namespace {

enum Kind : int64_t { kForward = 0, kInputGradient = 1, kKernelGradient = 2 };

// A primitive per (kind, shapes, strides, padding), made once: making one generates its kernel.
struct Plan {
  dnnl::primitive primitive;
  dnnl::memory::desc x_desc, y_desc;  // NHWC, as XLA lays out x and y (and their gradients).
  dnnl::memory::desc kernel_desc;   // The primitive's kernel layout.
  dnnl::memory::desc hwio_desc;     // The caller's.
  dnnl::memory::desc scratch_desc;
  bool reorder_kernel;
  dnnl::reorder kernel_reorder;     // hwio -> kernel_desc, or kernel_desc -> hwio for gradients.
};

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

using Key = std::vector<int64_t>;

std::mutex plans_mutex;
std::map<Key, std::shared_ptr<Plan>>& Plans() {
  static auto* plans = new std::map<Key, std::shared_ptr<Plan>>();
  return *plans;
}

// The caller's kernel, (kh, kw, in / groups, out) in memory, as oneDNN's logical dims: (out, in,
// kh, kw) for one group; (groups, out / groups, in / groups, kh, kw) for more, by strides.
dnnl::memory::desc HwioDesc(int64_t kh, int64_t kw, int64_t in_per_group, int64_t out,
                            int64_t groups) {
  if (groups == 1) return dnnl::memory::desc({out, in_per_group, kh, kw}, dt::f32, tag::hwio);
  return dnnl::memory::desc({groups, out / groups, in_per_group, kh, kw}, dt::f32,
                            dims{out / groups, 1, out, kw * in_per_group * out,
                                 in_per_group * out});
}

std::shared_ptr<Plan> MakePlan(int64_t kind, const dims& x_nchw, const dnnl::memory::desc& w_hwio,
                               const dims& y_nchw, const dims& strides, const dims& pad_l,
                               const dims& pad_r) {
  auto& engine = Engine();
  dnnl::memory::desc x_md(x_nchw, dt::f32, tag::nhwc);
  dnnl::memory::desc y_md(y_nchw, dt::f32, tag::nhwc);
  dnnl::memory::desc w_any(w_hwio.get_dims(), dt::f32, tag::any);
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  auto forward = dnnl::convolution_forward::primitive_desc(
      engine, dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, x_md,
      w_any, y_md, strides, pad_l, pad_r, attr);
  auto plan = std::make_shared<Plan>();
  plan->x_desc = x_md;
  plan->y_desc = y_md;
  plan->hwio_desc = w_hwio;
  if (kind == kForward) {
    plan->primitive = dnnl::convolution_forward(forward);
    plan->kernel_desc = forward.weights_desc();
    plan->scratch_desc = forward.scratchpad_desc();
  } else if (kind == kInputGradient) {
    auto pd = dnnl::convolution_backward_data::primitive_desc(
        engine, dnnl::algorithm::convolution_direct, x_md, w_any, y_md, strides, pad_l, pad_r,
        forward, attr);
    plan->primitive = dnnl::convolution_backward_data(pd);
    plan->kernel_desc = pd.weights_desc();
    plan->scratch_desc = pd.scratchpad_desc();
  } else {
    auto pd = dnnl::convolution_backward_weights::primitive_desc(
        engine, dnnl::algorithm::convolution_direct, x_md, w_any, y_md, strides, pad_l, pad_r,
        forward, attr);
    plan->primitive = dnnl::convolution_backward_weights(pd);
    plan->kernel_desc = pd.diff_weights_desc();
    plan->scratch_desc = pd.scratchpad_desc();
  }
  // oneDNN's fast kernels want their own blocked kernel layout; the activations stay NHWC.
  plan->reorder_kernel = plan->kernel_desc != w_hwio;
  if (plan->reorder_kernel) {
    auto from = kind == kKernelGradient ? plan->kernel_desc : w_hwio;
    auto to = kind == kKernelGradient ? w_hwio : plan->kernel_desc;
    plan->kernel_reorder = dnnl::reorder(dnnl::reorder::primitive_desc(engine, from, engine, to));
  }
  return plan;
}

ffi::Error Convolve(ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b,
                    ffi::ResultBuffer<ffi::F32> out, int64_t kind, int64_t stride_h,
                    int64_t stride_w, int64_t pad_top, int64_t pad_bottom, int64_t pad_left,
                    int64_t pad_right, int64_t groups) {
  // a, b -> out: forward x, w -> y; input gradient dy, w -> dx; kernel gradient x, dy -> dw.
  auto ad = a.dimensions(), bd = b.dimensions(), od = out->dimensions();
  if (ad.size() != 4 || bd.size() != 4 || od.size() != 4)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "onednn conv: operands must be 4-D");
  const int64_t* x = kind == kInputGradient ? od.begin() : ad.begin();
  const int64_t* w = kind == kKernelGradient ? od.begin() : bd.begin();
  const int64_t* y = kind == kForward ? od.begin() : (kind == kInputGradient ? ad.begin()
                                                                              : bd.begin());
  dims x_nchw{x[0], x[3], x[1], x[2]};
  dims y_nchw{y[0], y[3], y[1], y[2]};
  dims strides{stride_h, stride_w}, pad_l{pad_top, pad_left}, pad_r{pad_bottom, pad_right};
  Key key{kind, x[0], x[1], x[2], x[3], w[0], w[1], w[3], y[1], y[2],
          stride_h, stride_w, pad_top, pad_bottom, pad_left, pad_right, groups};
  std::shared_ptr<Plan> plan;
  try {
    {
      std::lock_guard<std::mutex> lock(plans_mutex);
      auto found = Plans().find(key);
      if (found != Plans().end()) plan = found->second;
    }
    if (!plan) {
      plan = MakePlan(kind, x_nchw, HwioDesc(w[0], w[1], w[2], w[3], groups), y_nchw, strides,
                      pad_l, pad_r);
      std::lock_guard<std::mutex> lock(plans_mutex);
      Plans().emplace(key, plan);
    }
    auto& engine = Engine();
    dnnl::stream stream(engine);
    // A user scratchpad, one per calling thread: XLA may run two convs at once.
    thread_local std::vector<uint8_t> scratch_bytes;
    size_t scratch_size = plan->scratch_desc.get_size();
    if (scratch_bytes.size() < scratch_size) scratch_bytes.resize(scratch_size);
    dnnl::memory scratch(plan->scratch_desc, engine, scratch_bytes.data());
    void* kernel_ptr = kind == kKernelGradient ? out->untyped_data() : b.untyped_data();
    dnnl::memory kernel_hwio(plan->hwio_desc, engine, kernel_ptr);
    dnnl::memory kernel = kernel_hwio;
    if (plan->reorder_kernel) {
      kernel = dnnl::memory(plan->kernel_desc, engine);
      if (kind != kKernelGradient) plan->kernel_reorder.execute(stream, kernel_hwio, kernel);
    }
    const auto &x_md = plan->x_desc, &y_md = plan->y_desc;
    if (kind == kForward) {
      dnnl::memory xm(x_md, engine, a.untyped_data()), ym(y_md, engine, out->untyped_data());
      plan->primitive.execute(stream, {{DNNL_ARG_SRC, xm}, {DNNL_ARG_WEIGHTS, kernel},
                                       {DNNL_ARG_DST, ym}, {DNNL_ARG_SCRATCHPAD, scratch}});
    } else if (kind == kInputGradient) {
      dnnl::memory dym(y_md, engine, a.untyped_data()), dxm(x_md, engine, out->untyped_data());
      plan->primitive.execute(stream, {{DNNL_ARG_DIFF_DST, dym}, {DNNL_ARG_WEIGHTS, kernel},
                                       {DNNL_ARG_DIFF_SRC, dxm}, {DNNL_ARG_SCRATCHPAD, scratch}});
    } else {
      dnnl::memory xm(x_md, engine, a.untyped_data()), dym(y_md, engine, b.untyped_data());
      plan->primitive.execute(stream, {{DNNL_ARG_SRC, xm}, {DNNL_ARG_DIFF_DST, dym},
                                       {DNNL_ARG_DIFF_WEIGHTS, kernel},
                                       {DNNL_ARG_SCRATCHPAD, scratch}});
      if (plan->reorder_kernel) plan->kernel_reorder.execute(stream, kernel, kernel_hwio);
    }
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("onednn conv: ") + e.what());
  }
  return ffi::Error::Success();
}

// A matmul primitive per (batch, m, k, n, transpositions), made once.
std::mutex matmuls_mutex;
std::map<Key, std::shared_ptr<dnnl::matmul>>& Matmuls() {
  static auto* matmuls = new std::map<Key, std::shared_ptr<dnnl::matmul>>();
  return *matmuls;
}

ffi::Error BatchedMatmul(ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b,
                         ffi::ResultBuffer<ffi::F32> c, int64_t transpose_a,
                         int64_t transpose_b) {
  auto a_dims = a.dimensions(), b_dims = b.dimensions();
  if (a_dims.size() != 3 || b_dims.size() != 3 || a_dims[0] != b_dims[0]) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "onednn matmul: need (batch, rows, cols) operands of one batch size");
  }
  const int64_t batch = a_dims[0];
  const int64_t m = transpose_a ? a_dims[2] : a_dims[1];
  const int64_t k = transpose_a ? a_dims[1] : a_dims[2];
  const int64_t n = transpose_b ? b_dims[1] : b_dims[2];
  try {
    dnnl::memory::desc a_desc({batch, m, k}, dt::f32, transpose_a ? tag::acb : tag::abc);
    dnnl::memory::desc b_desc({batch, k, n}, dt::f32, transpose_b ? tag::acb : tag::abc);
    dnnl::memory::desc c_desc({batch, m, n}, dt::f32, tag::abc);
    const Key key{batch, m, k, n, transpose_a, transpose_b};
    std::shared_ptr<dnnl::matmul> matmul;
    {
      std::lock_guard<std::mutex> lock(matmuls_mutex);
      auto found = Matmuls().find(key);
      if (found != Matmuls().end()) matmul = found->second;
    }
    if (!matmul) {
      matmul = std::make_shared<dnnl::matmul>(
          dnnl::matmul::primitive_desc(Engine(), a_desc, b_desc, c_desc));
      std::lock_guard<std::mutex> lock(matmuls_mutex);
      Matmuls()[key] = matmul;
    }
    dnnl::stream stream(Engine());
    dnnl::memory a_mem(a_desc, Engine(), a.untyped_data());
    dnnl::memory b_mem(b_desc, Engine(), b.untyped_data());
    dnnl::memory c_mem(c_desc, Engine(), c->untyped_data());
    // One matmul at a time: each runs on an OpenMP team as wide as the machine, and XLA may call
    // two independent ones at once; two teams on the same cores stall at their barriers.
    static std::mutex run_mutex;
    std::lock_guard<std::mutex> run_lock(run_mutex);
    matmul->execute(stream, {{DNNL_ARG_SRC, a_mem}, {DNNL_ARG_WEIGHTS, b_mem},
                             {DNNL_ARG_DST, c_mem}});
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("onednn matmul: ") + e.what());
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnJaxOnednnBatchedMatmul, BatchedMatmul,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("transpose_a")
                                  .Attr<int64_t>("transpose_b"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnJaxOnednnConv, Convolve,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("kind")
                                  .Attr<int64_t>("stride_h")
                                  .Attr<int64_t>("stride_w")
                                  .Attr<int64_t>("pad_top")
                                  .Attr<int64_t>("pad_bottom")
                                  .Attr<int64_t>("pad_left")
                                  .Attr<int64_t>("pad_right")
                                  .Attr<int64_t>("groups"));
