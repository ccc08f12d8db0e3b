"""rnnfast.keras: Keras 3 SimpleRNN / LSTM / GRU whose time loop runs on rnnfast's kernels.

The specification, as tested here against the stock keras.layers class holding the same
weights:
- fused configurations give the stock outputs and gradients (input, every weight, the
  initial states) to float rounding, and call rnnfast's op once per layer call;
- configurations the kernels cannot compute run Keras's own loop: bitwise the stock
  results, and rnnfast's op is not called;
- everything else is the stock layer's: config, parameter counts, summary, weight
  layout, `.keras` and `.weights.h5` files;
- `import rnnfast` never imports keras; `import rnnfast.keras` says what to do when keras
  is missing or runs on another backend.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

os.environ["KERAS_BACKEND"] = "torch"
keras = pytest.importorskip("keras")

import rnnfast.functional  # noqa: E402
import rnnfast.keras as rk  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAYERS = ["SimpleRNN", "LSTM", "GRU"]
B, T, I, U = 3, 6, 4, 5
F32_TOL = dict(rtol=1e-5, atol=1e-5)
F64_TOL = dict(rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

@pytest.fixture
def fused_calls(monkeypatch):
    """Counts the calls of rnnfast.functional.rnn / lstm / gru (rnnfast.keras's only entry
    into the kernels), by name, and the device type of each call's input."""
    calls = {"rnn": 0, "lstm": 0, "gru": 0, "devices": []}
    for name in ("rnn", "lstm", "gru"):
        original = getattr(rnnfast.functional, name)

        def spy(input, *args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            calls["devices"].append(input.device.type)
            return _original(input, *args, **kwargs)

        monkeypatch.setattr(rnnfast.functional, name, spy)
    return calls


def n_fused(calls) -> int:
    return calls["rnn"] + calls["lstm"] + calls["gru"]


def random_weights(layer, seed=0):
    """Random values for every weight of a built layer (biases too, so that they matter)."""
    rng = np.random.default_rng(seed)
    return [rng.uniform(-0.6, 0.6, w.shape).astype(w.dtype) for w in layer.get_weights()]


def layer_pair(name, wrap=None, stock_kwargs=None, input_shape=(B, T, I), **kwargs):
    """(stock layer, rnnfast layer) of the same configuration and the same random weights.
    wrap: e.g. keras.layers.Bidirectional; stock_kwargs: extra arguments of the stock one."""
    stock = getattr(keras.layers, name)(U, **kwargs, **(stock_kwargs or {}))
    fast = getattr(rk, name)(U, **kwargs)
    if wrap is not None:
        stock, fast = wrap(stock), wrap(fast)
    stock.build(input_shape)
    fast.build(input_shape)
    weights = random_weights(stock)
    stock.set_weights(weights)
    fast.set_weights(weights)
    return stock, fast


def inputs(dtype=np.float32, seed=1, shape=(B, T, I)):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def forward_backward(layer, x, training=False, initial_state=None, **call_kwargs):
    """Calls the layer and backpropagates a fixed random weighting of all it returns.
    Returns (outputs, gradients): gradients w.r.t. the input, each trainable weight and
    each initial state, in that order."""
    x = torch.tensor(x, requires_grad=True)
    states = None
    if initial_state is not None:
        states = [torch.tensor(s, requires_grad=True) for s in initial_state]
        call_kwargs["initial_state"] = states
    out = layer(x, training=training, **call_kwargs)
    outs = list(out) if isinstance(out, (list, tuple)) else [out]
    g = torch.Generator().manual_seed(2)
    loss = sum((o * torch.rand(o.shape, generator=g, dtype=o.dtype)).sum() for o in outs)
    for w in layer.trainable_weights:
        w.value.grad = None
    loss.backward()
    grads = [x.grad] + [w.value.grad for w in layer.trainable_weights]
    grads += [s.grad for s in states or []]
    return [o.detach() for o in outs], grads


def assert_close_lists(got, expected, **tol):
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, **tol)


def assert_equal_lists(got, expected):
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert torch.equal(g, e), (g - e).abs().max()


def states_of(state_count):
    rng = np.random.default_rng(3)
    return [rng.uniform(-1, 1, (B, U)).astype(np.float32) for _ in range(state_count)]


N_STATES = {"SimpleRNN": 1, "LSTM": 2, "GRU": 1}
OP_NAME = {"SimpleRNN": "rnn", "LSTM": "lstm", "GRU": "gru"}  # rnnfast.functional.*


def state_value(variable):
    return keras.ops.convert_to_tensor(variable).detach().clone()


# ---------------------------------------------------------------------------
# fused configurations: stock results to rounding, one rnnfast call
# ---------------------------------------------------------------------------

FUSED_OPTIONS = {
    "default": {},
    "return_sequences": dict(return_sequences=True),
    "return_state": dict(return_sequences=True, return_state=True),
    "go_backwards": dict(go_backwards=True, return_sequences=True, return_state=True),
    "no_bias": dict(use_bias=False, return_sequences=True),
    # inactive outside training, so the fused op serves inference
    "recurrent_dropout_at_inference": dict(recurrent_dropout=0.5, return_sequences=True),
}
LAYER_OPTIONS = {
    "SimpleRNN": {"relu": dict(activation="relu", return_sequences=True)},
    "LSTM": {"implementation_1": dict(implementation=1, return_state=True),
             "no_unit_forget_bias": dict(unit_forget_bias=False)},
    "GRU": {"implementation_1": dict(implementation=1, return_state=True)},
}
FUSED_CASES = [(name, opt) for name in LAYERS for opt in [*FUSED_OPTIONS, *LAYER_OPTIONS[name]]]


@pytest.mark.parametrize("name,option", FUSED_CASES)
def test_fused_matches_stock(name, option, fused_calls):
    kwargs = {**FUSED_OPTIONS, **LAYER_OPTIONS[name]}[option]
    stock, fast = layer_pair(name, **kwargs)
    x = inputs()
    expected = forward_backward(stock, x)
    assert n_fused(fused_calls) == 0
    got = forward_backward(fast, x)
    assert fused_calls[OP_NAME[name]] == 1
    assert_close_lists(got[0], expected[0], **F32_TOL)
    assert_close_lists(got[1], expected[1], **F32_TOL)


@pytest.mark.parametrize("name", LAYERS)
def test_explicit_initial_state_and_its_gradient(name, fused_calls):
    stock, fast = layer_pair(name, return_sequences=True, return_state=True)
    x, h0 = inputs(), states_of(N_STATES[name])
    expected = forward_backward(stock, x, initial_state=h0)
    got = forward_backward(fast, x, initial_state=h0)
    assert n_fused(fused_calls) == 1
    assert_close_lists(got[0], expected[0], **F32_TOL)
    assert_close_lists(got[1], expected[1], **F32_TOL)  # the last N_STATES: d loss / d state


def simple_rnn_float64_reference(layer, x):
    """forward_backward of a float64 SimpleRNN(return_sequences, return_state) written with
    torch ops: Keras's cell formula h = tanh(x K + b + h R) in true float64."""
    x = torch.tensor(x, requires_grad=True)
    kernel, recurrent, bias = (torch.tensor(w, requires_grad=True) for w in layer.get_weights())
    h = torch.zeros(x.shape[0], kernel.shape[1], dtype=torch.float64)
    steps = []
    for t in range(x.shape[1]):
        h = torch.tanh(x[:, t] @ kernel + bias + h @ recurrent)
        steps.append(h)
    outs = [torch.stack(steps, 1), h]
    g = torch.Generator().manual_seed(2)  # the weighting forward_backward uses
    sum((o * torch.rand(o.shape, generator=g, dtype=o.dtype)).sum() for o in outs).backward()
    return [o.detach() for o in outs], [x.grad, kernel.grad, recurrent.grad, bias.grad]


@pytest.mark.parametrize("name", LAYERS)
def test_float64(name, fused_calls):
    stock, fast = layer_pair(name, dtype="float64", return_sequences=True, return_state=True)
    x = inputs(np.float64)
    expected = forward_backward(stock, x)
    got = forward_backward(fast, x)
    assert fused_calls["devices"] == ["cpu"]
    assert got[0][0].dtype == torch.float64
    if name == "SimpleRNN":
        # Stock SimpleRNN's cell multiplies with keras.ops.matmul, which returns float32 for
        # float64 operands in keras 3.15.1 (its result_type); rnnfast stays in float64.
        assert_close_lists(got[0], expected[0], **F32_TOL)
        expected = simple_rnn_float64_reference(fast, x)
    assert_close_lists(got[0], expected[0], **F64_TOL)
    assert_close_lists(got[1], expected[1], **F64_TOL)


@pytest.mark.parametrize("policy,dtype", [("mixed_bfloat16", torch.bfloat16),
                                          ("mixed_float16", torch.float16)])
@pytest.mark.parametrize("name", LAYERS)
def test_mixed_precision_policy(name, policy, dtype, fused_calls):
    # half-precision inputs and weights; rnnfast computes in float32, rounds what it returns.
    stock, fast = layer_pair(name, dtype=policy, return_sequences=True)
    x = inputs()
    expected, got = stock(x), fast(x)
    assert n_fused(fused_calls) == 1
    assert got.dtype == expected.dtype == dtype
    torch.testing.assert_close(got.float(), expected.float(), rtol=0, atol=2e-2)


@pytest.mark.parametrize("name", LAYERS)
def test_integer_inputs_are_cast_like_stock(name, fused_calls):
    stock, fast = layer_pair(name, return_sequences=True)
    x = np.random.default_rng(4).integers(-2, 3, (B, T, I)).astype(np.int32)
    expected, got = stock(x), fast(x)
    assert n_fused(fused_calls) == 1
    assert got.dtype == expected.dtype == torch.float32
    torch.testing.assert_close(got, expected, **F32_TOL)


@pytest.mark.parametrize("name", LAYERS)
def test_dropout_in_training_equals_stock_with_the_same_seed(name, fused_calls):
    # Both layers draw their (B, I) input mask from a SeedGenerator with the same seed.
    stock, fast = layer_pair(name, dropout=0.4, seed=7, return_sequences=True)
    x = inputs()
    expected = forward_backward(stock, x, training=True)
    got = forward_backward(fast, x, training=True)
    assert n_fused(fused_calls) == 1
    assert_close_lists(got[0], expected[0], **F32_TOL)
    assert_close_lists(got[1], expected[1], **F32_TOL)
    # the mask was applied: some input gradients are exactly zero, unlike without dropout
    assert (got[1][0] == 0).any()
    assert not torch.allclose(got[0][0], fast(x, training=False))


@pytest.mark.parametrize("name", LAYERS)
def test_bidirectional(name, fused_calls):
    stock, fast = layer_pair(name, wrap=keras.layers.Bidirectional, return_sequences=True)
    assert isinstance(fast.forward_layer, getattr(rk, name))
    assert isinstance(fast.backward_layer, getattr(rk, name))
    x = inputs()
    expected = forward_backward(stock, x)
    got = forward_backward(fast, x)
    assert n_fused(fused_calls) == 2  # one call per direction
    assert_close_lists(got[0], expected[0], **F32_TOL)
    assert_close_lists(got[1], expected[1], **F32_TOL)


@pytest.mark.parametrize("name", LAYERS)
def test_stateful_over_two_batches_with_backward(name, fused_calls):
    # Stock LSTM/GRU's own fast path cannot backpropagate when stateful (keras 3.15.1:
    # "modified by an inplace operation"); their generic loop (use_cudnn=False) can.
    stock_kwargs = {} if name == "SimpleRNN" else {"use_cudnn": False}
    stock, fast = layer_pair(name, stateful=True, return_sequences=True,
                             stock_kwargs=stock_kwargs)
    for batch in range(2):
        x = inputs(seed=10 + batch)
        expected = forward_backward(stock, x)
        got = forward_backward(fast, x)
        assert_close_lists(got[0], expected[0], **F32_TOL)
        assert_close_lists(got[1], expected[1], **F32_TOL)
        assert_close_lists([state_value(s) for s in fast.states],
                           [state_value(s) for s in stock.states], **F32_TOL)
    assert n_fused(fused_calls) == 2
    # the state carried into the second batch mattered
    fast.reset_states()
    assert not torch.allclose(fast(inputs(seed=11)), got[0][0])


@pytest.mark.parametrize("name", LAYERS)
def test_symbolic_pass_runs_the_fused_op_on_meta_tensors(name, fused_calls):
    # fit() first builds the model with compute_output_spec on "meta" tensors; if that
    # raised, Keras would silently rerun the layer eagerly on real (ones) tensors.
    from keras.src import backend

    fast = getattr(rk, name)(U, return_sequences=True, return_state=True)
    spec = backend.compute_output_spec(fast, keras.KerasTensor((B, T, I)))
    assert fused_calls["devices"] == ["meta"]
    assert [tuple(s.shape) for s in spec] == [(B, T, U)] + [(B, U)] * N_STATES[name]


# ---------------------------------------------------------------------------
# fallbacks: Keras's own loop, bitwise the stock results, rnnfast not called
# ---------------------------------------------------------------------------

MASK = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 0, 1, 0, 0], [0, 1, 1, 1, 1, 0]], dtype=bool)
FALLBACK_CASES = [
    *[(name, "mask", dict(return_sequences=True), dict(mask=MASK)) for name in LAYERS],
    *[(name, "unroll", dict(unroll=True, return_state=True), {}) for name in LAYERS],
    *[(name, "recurrent_dropout_in_training", dict(recurrent_dropout=0.3, seed=5),
       dict(training=True)) for name in LAYERS],
    ("SimpleRNN", "sigmoid_activation", dict(activation="sigmoid"), {}),
    ("SimpleRNN", "linear_activation", dict(activation=None), {}),
    ("LSTM", "hard_sigmoid", dict(recurrent_activation="hard_sigmoid"), {}),
    ("GRU", "hard_sigmoid", dict(recurrent_activation="hard_sigmoid"), {}),
    ("LSTM", "relu_activation", dict(activation="relu"), {}),
    ("GRU", "reset_after_false", dict(reset_after=False, return_sequences=True), {}),
]


@pytest.mark.parametrize("name,case,kwargs,call_kwargs", FALLBACK_CASES,
                         ids=[f"{n}-{c}" for n, c, _, _ in FALLBACK_CASES])
def test_fallback_is_bitwise_stock(name, case, kwargs, call_kwargs, fused_calls):
    stock, fast = layer_pair(name, **kwargs)
    x = inputs()
    expected = forward_backward(stock, x, **call_kwargs)
    got = forward_backward(fast, x, **call_kwargs)
    assert n_fused(fused_calls) == 0
    assert_equal_lists(got[0], expected[0])
    assert_equal_lists(got[1], expected[1])


@pytest.mark.parametrize("name", ["LSTM", "GRU"])
def test_fallbacks_where_stock_is_broken_use_the_generic_loop(name, fused_calls):
    # keras 3.15.1 crashes on implementation=1 with dropout in training (its fast path
    # broadcasts the per-gate mask list), and a stateful LSTM/GRU cannot backpropagate;
    # rnnfast runs Keras's generic cell loop there: stock with use_cudnn=False, bitwise.
    stock, fast = layer_pair(name, implementation=1, dropout=0.3, seed=3,
                             stock_kwargs={"use_cudnn": False})
    x = inputs()
    assert_equal_lists(forward_backward(fast, x, training=True)[1],
                       forward_backward(stock, x, training=True)[1])
    stock, fast = layer_pair(name, stateful=True, recurrent_activation="hard_sigmoid",
                             stock_kwargs={"use_cudnn": False})
    for batch in range(2):
        x = inputs(seed=20 + batch)
        assert_equal_lists(forward_backward(fast, x)[1], forward_backward(stock, x)[1])
    assert n_fused(fused_calls) == 0


# ---------------------------------------------------------------------------
# the stock layer's config, counts, summary, files
# ---------------------------------------------------------------------------

SEED_COUNTS = {"SimpleRNN": (2600, 2651), "LSTM": (10400, 10451), "GRU": (7950, 8001)}


def seed_model(layer_module, name):
    """The tutorial model: Sequential([Input((10, 1)), X(50), Dense(1)])."""
    return keras.Sequential([keras.Input((10, 1)), getattr(layer_module, name)(50),
                             keras.layers.Dense(1)])


@pytest.mark.parametrize("name", LAYERS)
def test_parameter_counts_and_summary_are_keras(name):
    model = seed_model(rk, name)
    layer_count, total = SEED_COUNTS[name]
    assert model.layers[0].count_params() == layer_count
    assert model.count_params() == total
    lines = []
    model.summary(print_fn=lambda line, **_: lines.append(line))
    text = "\n".join(lines)
    assert f"({name})" in text
    assert f"Total params: {total:,}" in text


@pytest.mark.parametrize("name", LAYERS)
def test_config_and_weight_layout_are_the_stock_layers(name):
    kwargs = dict(return_sequences=True, dropout=0.1, seed=3, name="rnn")
    fast, stock = getattr(rk, name)(U, **kwargs), getattr(keras.layers, name)(U, **kwargs)
    assert isinstance(fast, getattr(keras.layers, name))
    assert fast.get_config() == stock.get_config()
    fast.build((B, T, I))
    stock.build((B, T, I))
    assert [(w.path, w.shape) for w in fast.weights] == [(w.path, w.shape) for w in stock.weights]
    assert keras.saving.get_registered_name(type(fast)) == f"rnnfast>{name}"


@pytest.mark.parametrize("name", LAYERS)
def test_keras_file_round_trip_restores_the_rnnfast_class(name, tmp_path, fused_calls):
    model = seed_model(rk, name)
    model.set_weights(random_weights(model))
    x = inputs(shape=(B, 10, 1))
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)  # default safe_mode=True
    assert type(loaded.layers[0]) is getattr(rk, name)
    assert torch.equal(loaded(x), model(x))
    assert n_fused(fused_calls) == 2


@pytest.mark.parametrize("name", LAYERS)
def test_weights_interchange_with_stock(name, tmp_path):
    stock, fast = seed_model(keras.layers, name), seed_model(rk, name)
    x = inputs(shape=(B, 10, 1))
    # stock -> rnnfast through get_weights / set_weights
    stock.set_weights(random_weights(stock, seed=1))
    fast.set_weights(stock.get_weights())
    torch.testing.assert_close(fast(x), stock(x), **F32_TOL)
    # rnnfast -> stock and stock -> rnnfast through .weights.h5 files
    fast.set_weights(random_weights(fast, seed=2))
    fast.save_weights(tmp_path / "fast.weights.h5")
    stock.load_weights(tmp_path / "fast.weights.h5")
    torch.testing.assert_close(stock(x), fast(x), **F32_TOL)
    stock.set_weights(random_weights(stock, seed=3))
    stock.save_weights(tmp_path / "stock.weights.h5")
    fast.load_weights(tmp_path / "stock.weights.h5")
    torch.testing.assert_close(fast(x), stock(x), **F32_TOL)


# ---------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", LAYERS)
def test_a_training_step_updates_the_keras_variables_like_stock(name, fused_calls):
    stock, fast = seed_model(keras.layers, name), seed_model(rk, name)
    stock.set_weights(random_weights(stock))
    fast.set_weights(stock.get_weights())
    for model in (stock, fast):
        model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    x, y = inputs(shape=(8, 10, 1)), inputs(shape=(8, 1), seed=5)
    loss_stock, loss_fast = stock.train_on_batch(x, y), fast.train_on_batch(x, y)
    assert loss_fast == pytest.approx(loss_stock, rel=1e-5)
    assert n_fused(fused_calls) >= 1
    for w_fast, w_stock, w_before in zip(fast.get_weights(), stock.get_weights(),
                                         random_weights(stock)):
        assert not np.array_equal(w_fast, w_before)  # every weight moved
        np.testing.assert_allclose(w_fast, w_stock, rtol=1e-5, atol=1e-6)


def test_fit_lowers_the_loss_on_the_sine_task(fused_calls):
    t = np.arange(110, dtype=np.float32)
    wave = np.sin(0.2 * t)
    x = np.stack([wave[i : i + 10] for i in range(100)])[..., None]
    y = wave[10:110, None]
    keras.utils.set_random_seed(0)
    model = seed_model(rk, "GRU")
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    history = model.fit(x, y, batch_size=20, epochs=4, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.5 * losses[0]
    assert fused_calls["gru"] >= 4 * 5


# ---------------------------------------------------------------------------
# imports, the example, the benchmark
# ---------------------------------------------------------------------------

IMPORT_SCENARIOS = textwrap.dedent(r"""
    # One fresh interpreter, scenarios in order; a failed `import rnnfast.keras` leaves
    # nothing behind in sys.modules. Prints one JSON line per scenario.
    import json, os, sys, types
    os.environ.pop("KERAS_BACKEND", None)

    def attempt(scenario):
        try:
            import rnnfast.keras
            result = {"ok": True, "backend": os.environ.get("KERAS_BACKEND")}
        except ImportError as err:
            result = {"ok": False, "message": str(err)}
        result["keras_imported"] = "keras" in sys.modules and sys.modules["keras"] is not None
        print(json.dumps({scenario: result}))

    import rnnfast
    print(json.dumps({"import_rnnfast": {"keras_imported": "keras" in sys.modules}}))

    os.environ["KERAS_BACKEND"] = "jax"
    attempt("other_backend_requested")
    del os.environ["KERAS_BACKEND"]

    sys.modules["keras"] = None  # what `import keras` sees when keras is not installed
    attempt("keras_missing")

    # keras imported earlier on another backend (no other backend is installed here, so
    # a stand-in module answers keras.backend.backend())
    fake = types.ModuleType("keras")
    fake.backend = types.SimpleNamespace(backend=lambda: "jax")
    sys.modules["keras"] = fake
    attempt("keras_on_another_backend")
""")


@pytest.fixture(scope="module")
def import_scenarios(tmp_path_factory):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KERAS_HOME": str(tmp_path_factory.mktemp("kh"))}
    proc = subprocess.run([sys.executable, "-c", IMPORT_SCENARIOS], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    results = {}
    for line in proc.stdout.splitlines():
        results.update(json.loads(line))
    return results


def test_import_rnnfast_does_not_import_keras(import_scenarios):
    assert import_scenarios["import_rnnfast"]["keras_imported"] is False


@pytest.mark.parametrize("scenario", ["other_backend_requested", "keras_missing",
                                      "keras_on_another_backend"])
def test_import_rnnfast_keras_says_what_to_do(import_scenarios, scenario):
    result = import_scenarios[scenario]
    assert result["ok"] is False
    assert "KERAS_BACKEND=torch" in result["message"]
    assert "pip install keras" in result["message"]
    if scenario == "other_backend_requested":
        assert "'jax'" in result["message"]
        assert result["keras_imported"] is False  # refused before importing keras


def test_example_script_trains_the_three_models(tmp_path):
    # KERAS_BACKEND unset: the example imports rnnfast.keras before keras, which selects
    # the torch backend (so this also checks that rule of rnnfast.keras).
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env.update(PYTHONPATH=str(ROOT), KERAS_HOME=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "keras_seed_models.py"), "--backend", "both",
         "--epochs", "1", "--samples", "32"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "(backend torch)" in proc.stdout
    for name in LAYERS:
        assert f"=== {name}(50), backend keras" in proc.stdout
        assert f"=== {name}(50), backend rnnfast (rnnfast.keras.{name})" in proc.stdout
    assert "ms per training step" in proc.stdout
    assert "speedup" in proc.stdout


def test_benchmark_smoke(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("keras_bench", ROOT / "bench" / "keras_bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--smoke", "--out", str(tmp_path)]) == 0
    assert "speedup" in capsys.readouterr().out
    result = json.loads((tmp_path / "results.json").read_text())
    assert [c["layer"] for c in result["cases"]] == LAYERS
    for case in result["cases"]:
        assert case["keras_ms"] > 0 and case["rnnfast_ms"] > 0
        assert case["speedup"] == pytest.approx(case["keras_ms"] / case["rnnfast_ms"])
    assert result["machine"]["torch_num_threads"] == torch.get_num_threads()
