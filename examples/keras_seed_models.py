"""The classic Keras tutorial RNNs, stock Keras against rnnfast.keras (Keras 3, torch backend).

    Sequential([Input((10, 1)), SimpleRNN(50), Dense(1)])   # and LSTM(50), GRU(50)
    model.compile(optimizer="adam", loss="mse")

Task: a sine wave cut into windows of 10 values; the model predicts the next value.
rnnfast.keras's layers are the stock layers with the time loop fused, so the only change
in a program is the import (`from rnnfast.keras import SimpleRNN, LSTM, GRU`).

    python examples/keras_seed_models.py                      # both backends, 3 epochs
    python examples/keras_seed_models.py --backend rnnfast --epochs 20
    python examples/keras_seed_models.py --models lstm,gru --backend keras

For each model it prints the summary, the loss of every epoch, the test MSE and the
median time of a training step (the first step, which also builds the model, excluded).
With --backend both the two backends start from the same weights and see the same
batches, so their losses agree to float rounding; the last table gives the speedup.
rnnfast must be importable (pip install -e . from the repository root, or PYTHONPATH=.).
Keras needs the torch backend: `import rnnfast.keras` before `import keras` selects it when
KERAS_BACKEND is unset (and refuses, saying so, when it names another backend).
"""

from __future__ import annotations

import argparse
import statistics
import time

import rnnfast.keras  # first: sets KERAS_BACKEND=torch if unset, before keras is imported

import keras  # noqa: E402  (after rnnfast.keras, see above)
import numpy as np  # noqa: E402

WINDOW = 10
UNITS = 50
MODELS = {"simplernn": "SimpleRNN", "lstm": "LSTM", "gru": "GRU"}
BACKENDS = {"keras": keras.layers, "rnnfast": rnnfast.keras}


def sine_windows(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n windows (n, 10, 1) of a noisy sine wave and the value after each (n, 1), shuffled."""
    rng = np.random.default_rng(seed)
    t = np.arange(n + WINDOW, dtype=np.float32)
    wave = np.sin(0.1 * t) + 0.05 * rng.standard_normal(t.shape).astype(np.float32)
    x = np.stack([wave[i : i + WINDOW] for i in range(n)])[..., None]
    y = wave[WINDOW : WINDOW + n, None]
    order = rng.permutation(n)
    return x[order], y[order]


def build(layer_module, class_name: str) -> keras.Model:
    model = keras.Sequential([
        keras.Input((WINDOW, 1)),
        getattr(layer_module, class_name)(UNITS),
        keras.layers.Dense(1),
    ])
    model.compile(optimizer="adam", loss="mse")
    return model


class StepTimer(keras.callbacks.Callback):
    """Wall time of every training step (batch)."""

    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def train(model, data, args) -> dict:
    (x_train, y_train), (x_test, y_test) = data
    timer = StepTimer()
    history = model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs,
                        shuffle=False, verbose=0, callbacks=[timer])
    return {
        "losses": history.history["loss"],
        "test_mse": float(model.evaluate(x_test, y_test, verbose=0)),
        # the first step also builds the model and the optimizer
        "step_ms": 1e3 * statistics.median(timer.seconds[1:] or timer.seconds),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["keras", "rnnfast", "both"], default="both")
    parser.add_argument("--models", default="simplernn,lstm,gru",
                        help="comma list of simplernn, lstm, gru")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=512, help="training windows")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    x, y = sine_windows(args.samples + args.samples // 4, args.seed)
    data = (x[: args.samples], y[: args.samples]), (x[args.samples :], y[args.samples :])
    backends = ["keras", "rnnfast"] if args.backend == "both" else [args.backend]
    print(f"keras {keras.__version__} (backend {keras.backend.backend()}), "
          f"{args.samples} windows of {WINDOW}, batch {args.batch_size}, {args.epochs} epochs")

    rows = []
    for key in args.models.split(","):
        class_name = MODELS[key.strip().lower()]
        keras.utils.set_random_seed(args.seed)
        initial_weights = None
        results = {}
        for backend in backends:
            model = build(BACKENDS[backend], class_name)
            if initial_weights is None:
                initial_weights = model.get_weights()
            model.set_weights(initial_weights)  # both backends start from the same weights
            print(f"\n=== {class_name}(50), backend {backend} "
                  f"({type(model.layers[0]).__module__}.{class_name}) ===")
            model.summary()
            results[backend] = train(model, data, args)
            r = results[backend]
            print("loss per epoch: " + " ".join(f"{v:.5f}" for v in r["losses"]))
            print(f"test mse {r['test_mse']:.5f}, {r['step_ms']:.2f} ms per training step")
        rows.append((class_name, results))

    print(f"\n{'model':<10}" + "".join(f"{b + ' loss':>16}{b + ' ms/step':>18}" for b in backends)
          + ("   speedup" if len(backends) == 2 else ""))
    for class_name, results in rows:
        line = f"{class_name:<10}"
        for b in backends:
            line += f"{results[b]['losses'][-1]:>16.5f}{results[b]['step_ms']:>18.2f}"
        if len(backends) == 2:
            line += f"{results['keras']['step_ms'] / results['rnnfast']['step_ms']:>9.2f}x"
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
