"""A progress bar that uses rich, else tqdm, else plain prints (the GPU machine may
have neither package)."""

from __future__ import annotations

import sys

__all__ = ["make_progress"]


class _Plain:
    def __init__(self, total: int, stream=None):
        self.total, self.done = total, 0
        self.stream = stream or sys.stdout

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def describe(self, text: str) -> None:
        step = f"{self.done + 1}/{self.total}" if self.done < self.total else "after"
        print(f"[{step}] {text}", file=self.stream, flush=True)

    def advance(self) -> None:
        self.done += 1

    def log(self, text: str) -> None:
        print(text, file=self.stream, flush=True)


class _Rich:
    def __init__(self, total: int, rich_progress):
        rp = rich_progress
        self._p = rp.Progress(
            rp.SpinnerColumn(),
            rp.TextColumn("{task.description}"),
            rp.BarColumn(),
            rp.MofNCompleteColumn(),
            rp.TimeElapsedColumn(),
            transient=True,
        )
        self._task = self._p.add_task("starting", total=total)

    def __enter__(self):
        self._p.__enter__()
        return self

    def __exit__(self, *exc):
        return self._p.__exit__(*exc)

    def describe(self, text: str) -> None:
        self._p.update(self._task, description=text)

    def advance(self) -> None:
        self._p.advance(self._task)

    def log(self, text: str) -> None:
        self._p.console.print(text, markup=False, highlight=False)


class _Tqdm:
    def __init__(self, total: int, tqdm_cls):
        self._cls = tqdm_cls
        self._bar = tqdm_cls(total=total, dynamic_ncols=True, leave=False)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._bar.close()
        return False

    def describe(self, text: str) -> None:
        self._bar.set_description_str(text)

    def advance(self) -> None:
        self._bar.update(1)

    def log(self, text: str) -> None:
        self._cls.write(text)


def make_progress(total: int, kind: str = "auto"):
    """kind: auto (rich > tqdm > plain), rich, tqdm or plain. A bar is drawn only on a
    terminal; otherwise (logs, CI, pytest) plain lines are printed."""
    if kind == "auto" and not sys.stdout.isatty():
        kind = "plain"
    if kind in ("auto", "rich"):
        try:
            import rich.progress

            return _Rich(total, rich.progress)
        except ImportError:
            if kind == "rich":
                print("rnnfast.bench: rich is not installed; using plain progress output")
    if kind in ("auto", "tqdm"):
        try:
            from tqdm.auto import tqdm

            return _Tqdm(total, tqdm)
        except ImportError:
            if kind == "tqdm":
                print("rnnfast.bench: tqdm is not installed; using plain progress output")
    return _Plain(total)
