"""Precomputed teacher distributions: same KL as the live computation, content-addressed, atomic."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training.students import (
    STUDENT_RECIPES,
    STUDENTS,
    FrozenTeacher,
    ImitationConfig,
    StudentTask,
    build_student,
    kl_from_log_probs,
)
from training.teacher_cache import TeacherProbCache, cache_key, kl_from_cached


def tiny(E=7, N=11, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(E, d + 1, generator=g), torch.randn(N, d + 1, generator=g)


def test_kl_from_cached_equals_the_direct_kl_for_exact_probabilities() -> None:
    q, items = tiny()
    t_logits = q @ items.T
    s_logp = F.log_softmax(torch.randn(7, 11), dim=-1)
    for tau in (1.0, 2.0):
        logp_t = F.log_softmax(t_logits / tau, dim=-1)
        cached = kl_from_cached(F.log_softmax(s_logp / tau, dim=-1), logp_t.exp(), (logp_t.exp() * logp_t).sum(-1), tau)
        direct = kl_from_log_probs(F.log_softmax(s_logp / tau, dim=-1), t_logits, tau)
        torch.testing.assert_close(cached, direct, rtol=1e-5, atol=1e-6)


def test_build_stores_float16_probabilities_and_reads_rows_in_request_order(tmp_path) -> None:
    q, items = tiny()
    cache = TeacherProbCache.build(q, items, 1.0, cache_dir=tmp_path, chunk=3)  # chunks smaller than E
    exact = F.softmax(q @ items.T, dim=-1)
    ids = torch.tensor([5, 0, 5, 2])
    p, negent = cache.rows(ids, torch.device("cpu"))
    assert p.dtype == torch.float32 and p.shape == (4, 11)
    torch.testing.assert_close(p, exact[ids], rtol=2e-3, atol=1e-6)
    torch.testing.assert_close(negent, (exact * exact.log()).sum(-1)[ids], rtol=1e-5, atol=1e-6)
    assert sorted(x.name for x in tmp_path.iterdir()) == sorted([cache.path.name, cache.path.stem + ".negent.npy"])


def test_cache_is_reused_and_keyed_by_content(tmp_path, monkeypatch) -> None:
    q, items = tiny()
    first = TeacherProbCache.build(q, items, 1.0, cache_dir=tmp_path)
    monkeypatch.setattr(F, "log_softmax", lambda *a, **k: pytest.fail("recomputed a cached teacher"))
    again = TeacherProbCache.build(q, items, 1.0, cache_dir=tmp_path)
    assert again.path == first.path
    monkeypatch.undo()
    assert cache_key(q, items, 2.0) != cache_key(q, items, 1.0)
    assert cache_key(q + 1e-3, items, 1.0) != cache_key(q, items, 1.0)
    other = TeacherProbCache.build(q, items, 2.0, cache_dir=tmp_path)
    assert other.path != first.path


def test_a_truncated_cache_file_is_rebuilt(tmp_path) -> None:
    q, items = tiny()
    path = TeacherProbCache.build(q, items, 1.0, cache_dir=tmp_path).path
    path.write_bytes(path.read_bytes()[:10])  # e.g. a disk that filled up under another tool
    cache = TeacherProbCache.build(q, items, 1.0, cache_dir=tmp_path)
    p, _ = cache.rows(torch.arange(7), torch.device("cpu"))
    assert cache.shape == (7, 11) and torch.isfinite(p).all() and torch.allclose(p.sum(-1), torch.ones(7), atol=1e-2)


def test_cache_probs_needs_cached_queries() -> None:
    with pytest.raises(ValueError, match="cache_teacher"):
        ImitationConfig(cache_teacher=False, cache_probs=True)


@pytest.mark.parametrize("student", STUDENTS)
def test_student_task_kl_with_cached_probabilities_matches_live_teachers(student_ds, teacher_dirs, tmp_path,
                                                                         monkeypatch, student) -> None:
    monkeypatch.setenv("SSI_CACHE_DIR", str(tmp_path))
    terms = {}
    for cache_probs in (False, True):
        torch.manual_seed(0)
        model = build_student(student, student_ds, "smoke")
        teachers = {n: FrozenTeacher.load(n, d, student_ds) for n, d in teacher_dirs.items()}
        task = StudentTask(model, student_ds, teachers, ImitationConfig(cache_probs=cache_probs),
                           model.default_loss, batch_size=16, scheme=STUDENT_RECIPES[student].examples)
        task.on_epoch_start(1)
        assert all((t.probs is not None) == cache_probs for t in task.teachers.values())
        batch = next(task.batches(1, np.random.default_rng(0), 0, 1))
        torch.manual_seed(1)
        terms[cache_probs] = task(batch)
    for name in teacher_dirs:
        torch.testing.assert_close(terms[True][f"kl_{name}"], terms[False][f"kl_{name}"], rtol=5e-3, atol=1e-4)
    assert len(list((tmp_path / "teacher_probs").glob("*.f16"))) == len(teacher_dirs)
    terms[True]["loss"].backward()
