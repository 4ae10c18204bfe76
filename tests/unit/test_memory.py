"""reuse_freed_memory: glibc's settings are changed once for the outermost block and restored after,
also when the block raises; a process without glibc runs the block unchanged."""

from __future__ import annotations

import pytest

from graphprune import memory


class FakeLibc:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int]] = []

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append(("mallopt", param, value))
        return 1

    def malloc_trim(self, pad: int) -> int:
        self.calls.append(("malloc_trim", pad, 0))
        return 1


def test_outermost_block_sets_and_restores(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeLibc()
    monkeypatch.setattr(memory, "_LIBC", fake)
    with memory.reuse_freed_memory():
        with memory.reuse_freed_memory():
            assert fake.calls == [("mallopt", memory._M_TRIM_THRESHOLD, memory._NEVER_TRIM),
                                  ("mallopt", memory._M_MMAP_MAX, 0)]
        assert len(fake.calls) == 2  # the inner block restores nothing
    assert fake.calls[2:] == [("mallopt", memory._M_TRIM_THRESHOLD, memory._DEFAULT_TRIM_THRESHOLD),
                              ("mallopt", memory._M_MMAP_MAX, memory._DEFAULT_MMAP_MAX), ("malloc_trim", 0, 0)]
    assert memory._depth == 0


def test_restored_when_the_block_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeLibc()
    monkeypatch.setattr(memory, "_LIBC", fake)
    with pytest.raises(RuntimeError), memory.reuse_freed_memory():
        raise RuntimeError("boom")
    assert fake.calls[-1] == ("malloc_trim", 0, 0)
    assert memory._depth == 0


def test_without_glibc_the_block_just_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "_LIBC", None)
    with memory.reuse_freed_memory():
        ran = True
    assert ran and memory._depth == 0


def test_real_libc_block_runs_torch_work() -> None:
    import torch

    with memory.reuse_freed_memory():
        for _ in range(3):
            x = torch.ones(8 << 20)  # 32 MB: above glibc's mmap threshold
            assert float(x.sum()) == 8 << 20
            del x
    assert memory._depth == 0
