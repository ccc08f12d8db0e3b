// Smoke test of the LibTorch (CMake) build of rnnfast: calls the public C++ API of
// csrc/rnnfast.h on CPU and checks one Elman step against values computed by hand.
// Prints "smoke: OK" and exits 0 on success.
#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "rnnfast.h"

namespace {

int failures = 0;

void check(bool ok, const std::string& what) {
  if (!ok) {
    std::fprintf(stderr, "smoke: FAILED: %s\n", what.c_str());
    ++failures;
  }
}

at::Tensor tensor(std::vector<double> values, at::IntArrayRef shape) {
  return at::tensor(values, at::kDouble).view(shape);
}

}  // namespace

int main() {
  // L = 1 step, N = 2, H_in = 2, H = 2.
  const at::Tensor x = tensor({0.5, -1.0, 2.0, 0.25}, {1, 2, 2});
  const at::Tensor h0 = tensor({0.1, -0.2, 0.0, 0.3}, {1, 2, 2});
  const std::vector<at::Tensor> weights = {
      tensor({0.3, -0.1, 0.2, 0.4}, {2, 2}),   // weight_ih_l0
      tensor({0.5, 0.1, -0.3, 0.2}, {2, 2}),   // weight_hh_l0
      tensor({0.05, -0.02}, {2}),              // bias_ih_l0
      tensor({0.01, 0.03}, {2}),               // bias_hh_l0
  };
  // z[n][i] = w_ih[i] . x[n] + b_ih[i] + w_hh[i] . h0[n] + b_hh[i], by hand:
  //   n=0, i=0:  0.15 + 0.1   + 0.05 + 0.05 - 0.02 + 0.01 =  0.34
  //   n=0, i=1:  0.1  - 0.4   - 0.02 - 0.03 - 0.04 + 0.03 = -0.36
  //   n=1, i=0:  0.6  - 0.025 + 0.05 + 0.0  + 0.03 + 0.01 =  0.665
  //   n=1, i=1:  0.4  + 0.1   - 0.02 - 0.0  + 0.06 + 0.03 =  0.57
  const double z[4] = {0.34, -0.36, 0.665, 0.57};

  for (const char* act : {"tanh", "relu"}) {
    const char* mode = std::string(act) == "tanh" ? "RNN_TANH" : "RNN_RELU";
    auto [output, h_ns, workspaces] =
        rnnfast::rnn_forward(x, {h0}, weights, std::nullopt, std::nullopt, mode,
                             /*has_biases=*/true, /*num_layers=*/1, /*proj_size=*/0,
                             /*bidirectional=*/false, /*train=*/true);
    const at::Tensor h_n = h_ns.at(0), workspace = workspaces.at(0);
    check(h_n.sizes().equals({1, 2, 2}), std::string(act) + ": h_n shape");
    check(output.sizes().equals({1, 2, 2}), std::string(act) + ": output shape");
    check(workspace.sizes().equals({0, 2, 2}), std::string(act) + ": workspace shape");
    const at::Tensor hn = h_n.contiguous();
    for (int k = 0; k < 4; ++k) {
      const double expected = std::string(act) == "tanh" ? std::tanh(z[k]) : std::max(z[k], 0.0);
      const double got = hn.data_ptr<double>()[k];
      if (std::abs(got - expected) > 1e-12) {
        std::fprintf(stderr, "smoke: %s h_n[%d] = %.17g, expected %.17g\n", act, k, got,
                     expected);
        check(false, std::string(act) + ": h_n value");
      }
    }
    check(at::equal(output, h_n), std::string(act) + ": output == h_n for one step");
  }

  // The cell op agrees with the sequence op on one step.
  const at::Tensor h_cell = rnnfast::rnn_cell_forward(x[0], h0[0], weights[0], weights[1],
                                                      weights[2], weights[3], "tanh");
  const at::Tensor h_seq = std::get<1>(rnnfast::rnn_forward(
      x, {h0}, weights, std::nullopt, std::nullopt, "RNN_TANH", true, 1, 0, false, true))[0][0];
  check(at::allclose(h_cell, h_seq, 0, 1e-14), "rnn_cell_forward == rnn_forward");

  // Backward through the C++ API: dL/db for L = sum(h_n) is sum_n (1 - h^2).
  const auto fwd = rnnfast::rnn_forward(x, {h0}, weights, std::nullopt, std::nullopt,
                                        "RNN_TANH", true, 1, 0, false, true);
  c10::List<std::optional<at::Tensor>> grad_h_n;
  grad_h_n.push_back(at::ones({1, 2, 2}, at::kDouble));
  const auto bwd = rnnfast::rnn_backward(std::nullopt, grad_h_n, x, {h0}, weights, std::nullopt,
                                         std::nullopt, std::get<0>(fwd), std::get<2>(fwd),
                                         "RNN_TANH", true, 1, 0, false);
  const at::Tensor h = std::get<1>(fwd)[0][0];
  const at::Tensor db_expected = (1 - h * h).sum(0);
  check(at::allclose(std::get<2>(bwd)[2], db_expected, 0, 1e-14), "grad of bias_ih");
  check(at::allclose(std::get<2>(bwd)[3], db_expected, 0, 1e-14), "grad of bias_hh");

  // LSTM through the same op: the state list is [h, c]; one step from zero c gives
  // c = i * g and h = o * tanh(c), checked here against those formulas.
  {
    const at::Tensor w_ih = at::linspace(-0.4, 0.4, 16, at::kDouble).view({8, 2});
    const at::Tensor w_hh = at::linspace(0.3, -0.3, 16, at::kDouble).view({8, 2});
    const at::Tensor c0 = at::zeros({1, 2, 2}, at::kDouble);
    const auto lstm = rnnfast::rnn_forward(x, {h0, c0}, {w_ih, w_hh}, std::nullopt, std::nullopt,
                                           "LSTM", /*has_biases=*/false, 1, 0, false, true);
    const at::Tensor gates = at::matmul(x[0], w_ih.t()) + at::matmul(h0[0], w_hh.t());
    const auto chunks = gates.chunk(4, 1);
    const at::Tensor c = at::sigmoid(chunks[0]) * at::tanh(chunks[2]);
    const at::Tensor hh = at::sigmoid(chunks[3]) * at::tanh(c);
    check(std::get<1>(lstm).size() == 2, "LSTM returns [h_n, c_n]");
    check(at::allclose(std::get<1>(lstm)[1][0], c, 0, 1e-14), "LSTM c_n");
    check(at::allclose(std::get<1>(lstm)[0][0], hh, 0, 1e-14), "LSTM h_n");
  }

  // Bad arguments raise c10::Error with the shared message.
  bool threw = false;
  try {
    rnnfast::rnn_forward(x, {h0}, weights, std::nullopt, std::nullopt, "SIGMOID", true, 1, 0,
                         false, true);
  } catch (const c10::Error& e) {
    threw = std::string(e.what()).find("mode must be 'RNN_TANH', 'RNN_RELU', 'LSTM' or 'GRU'") !=
            std::string::npos;
  }
  check(threw, "bad mode raises c10::Error");

  if (failures != 0) return 1;
  std::printf("smoke: OK (rnnfast::rnn_forward, rnn_cell_forward, rnn_backward on CPU)\n");
  return 0;
}
