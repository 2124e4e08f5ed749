"""Where the CLI's words go: logs and progress to stderr, JSON lines to stdout; and
the remaining-time estimates the progress bars show."""

from __future__ import annotations

import contextlib
import json
import sys
from collections import Counter
from collections.abc import Hashable, Iterator, Mapping, Sequence

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class Output:
    def __init__(self, *, quiet: bool = False, json_lines: bool = False):
        self.quiet = quiet
        self.json_lines = json_lines
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)

    def log(self, message: str) -> None:
        if not self.quiet:
            self.err.print(Text(message))

    def error(self, message: str) -> None:
        self.err.print(Text(f"error: {message}", style="bold red"))

    def warn(self, message: str) -> None:
        # Under --quiet only errors: a run's warnings stay in its report and JSON record.
        if not self.quiet:
            self.err.print(Text(f"warning: {message}", style="yellow"))

    def summary(self, failures: list[str]) -> int:
        """Name every failed input at the end of a batch; return the exit code."""
        if not failures:
            return 0
        self.err.print(f"{len(failures)} input(s) failed:")
        for line in failures:
            self.err.print(Text(f"  {line}"))
        return 1

    def record(self, obj: dict) -> None:
        if self.json_lines:
            sys.stdout.write(json.dumps(obj) + "\n")
            sys.stdout.flush()

    @contextlib.contextmanager
    def progress(self) -> Iterator[Progress | None]:
        """Rich progress bars, only when stderr is a terminal and not --quiet."""
        if self.quiet or not self.err.is_terminal:
            yield None
            return
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            EtaColumn(),
        )
        with Progress(*columns, console=self.err, transient=False) as bar:
            yield bar


class EtaColumn(TimeRemainingColumn):
    """The time left until a task's ``finish_at`` field (on the bar's clock), counting down
    between updates; None shows as unknown. Tasks without the field get rich's own
    estimate (completed over elapsed), right for steps of equal cost."""

    def render(self, task: Task) -> Text:
        if "finish_at" not in task.fields:
            return super().render(task)
        finish_at = task.fields["finish_at"]
        if finish_at is None:
            return Text("-:--:--", style="progress.remaining")
        minutes, seconds = divmod(int(max(0.0, finish_at - task.get_time())), 60)
        hours, minutes = divmod(minutes, 60)
        return Text(f"{hours:d}:{minutes:02d}:{seconds:02d}", style="progress.remaining")


class ScheduleEta:
    """Remaining time of a run of steps whose cost depends on their kind: ReSample's plain
    DDIM steps are cheap and its data-consistency steps (pixel, then latent, the dearest)
    come late, so the pace of the steps done so far is a poor guide to those left. Each
    remaining step is priced at the mean duration of its kind so far, over this run and
    the earlier ones (``start`` begins the next input's run and keeps them); a kind not
    timed yet at its ``prior_cost`` relative to the kinds timed."""

    def __init__(self, prior_cost: Mapping[Hashable, float]):
        self.prior_cost = dict(prior_cost)
        self.kinds: list[Hashable] = []  # the kind of every step of the run, in order
        self.done = 0
        self._seconds: Counter[Hashable] = Counter()
        self._count: Counter[Hashable] = Counter()

    def start(self, kinds: Sequence[Hashable]) -> None:
        """Begin a run of steps of these kinds."""
        self.kinds, self.done = list(kinds), 0

    def replan(self, kinds: Sequence[Hashable]) -> None:
        """The steps not done yet are of these kinds (the run turned out to have others)."""
        self.kinds = self.kinds[: self.done] + list(kinds)

    def record(self, seconds: float) -> None:
        """The run's next step took ``seconds``."""
        kind = self.kinds[self.done]
        self._seconds[kind] += seconds
        self._count[kind] += 1
        self.done += 1

    def step_seconds(self, kind: Hashable) -> float | None:
        """The expected duration of one step of ``kind``; None before any step is timed."""
        if self._count[kind]:
            return self._seconds[kind] / self._count[kind]
        timed_cost = sum(self.prior_cost[k] * n for k, n in self._count.items())
        if not timed_cost:
            return None
        return self.prior_cost[kind] * sum(self._seconds.values()) / timed_cost

    def remaining(self) -> float | None:
        """Seconds left for the run's steps not done; None before any step is timed."""
        left = Counter(self.kinds[self.done :])
        estimates = [(n, self.step_seconds(kind)) for kind, n in left.items()]
        if any(seconds is None for _, seconds in estimates):
            return None
        return sum(n * seconds for n, seconds in estimates)


def batch_remaining(
    finished: Sequence[float], in_hand_elapsed: float, in_hand_left: float | None, queued: int
) -> float | None:
    """Seconds left in a batch: what is left of the input in hand, plus each ``queued``
    input at the mean duration of the ``finished`` ones (before any has finished, at the
    in-hand input's expected total). None when nothing is known yet."""
    if finished:
        per_input = sum(finished) / len(finished)
        in_hand = in_hand_left if in_hand_left is not None else max(0.0, per_input - in_hand_elapsed)
    elif in_hand_left is not None:
        per_input, in_hand = in_hand_elapsed + in_hand_left, in_hand_left
    else:
        return None
    return in_hand + queued * per_input
