"""Layer mappings for 6 -> 3 and 6 -> 6 (same-depth pruned student); projection."""
import pytest
import torch

from ddk_fast.distill import (ArgminMapping, FusionMapping, HiddenProjection, HighwayFusion, RandomMapping,
                              build_mapping, recursive_fusion, window_fusion)

B, S, D = 2, 4, 6


def _states(n, seed=0, width=D):
    """Distinguishable states: state i is filled around i (embedding = index 0)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.full((B, S, width), float(i)) + 0.01 * torch.randn(B, S, width, generator=g) for i in range(n + 1)]


def _which(targets, teacher):
    """Teacher index of each target (identity check)."""
    return [next(i for i, t in enumerate(teacher) if t is x) for x in targets]


@pytest.mark.parametrize("name,ls,expected", [
    ("uniform", 3, [0, 2, 4, 6]), ("last", 3, [0, 4, 5, 6]), ("skip", 3, [0, 1, 2, 3]),
    ("uniform", 6, list(range(7))), ("last", 6, list(range(7))), ("skip", 6, list(range(7))),
    ("uniform", 4, [0, 1, 3, 4, 6]),
])
def test_index_mappings(name, ls, expected):
    teacher = _states(6)
    mapping = build_mapping(name, ls, 6)
    assert _which(mapping.targets(teacher), teacher) == expected
    no_emb = build_mapping(name, ls, 6, include_embeddings=False)
    assert _which(no_emb.targets(teacher), teacher) == expected[1:]
    student = _states(ls, seed=1)
    s_list, t_list = mapping.align(student, teacher)
    assert len(s_list) == len(t_list) == ls + 1 and s_list[0] is student[0]
    s_list, t_list = no_emb.align(student, teacher)
    assert len(s_list) == ls and s_list[0] is student[1]


def test_mean_mapping_groups():
    teacher = _states(6)
    targets = build_mapping("mean", 3, 6).targets(teacher)
    assert targets[0] is teacher[0]
    for m, group in enumerate([(1, 2), (3, 4), (5, 6)], start=1):
        torch.testing.assert_close(targets[m], (teacher[group[0]] + teacher[group[1]]) / 2)
    same = build_mapping("mean", 6, 6).targets(teacher)
    assert all(torch.equal(a, b) for a, b in zip(same, teacher))


def test_random_mapping_fixed_and_resampled():
    teacher = _states(6)
    fixed = RandomMapping(3, 6, seed=3)
    first = _which(fixed.targets(teacher), teacher)
    assert first == _which(fixed.targets(teacher), teacher) == _which(RandomMapping(3, 6, seed=3).targets(teacher), teacher)
    assert first[0] == 0 and first[1:] == sorted(set(first[1:])) and all(1 <= t <= 6 for t in first[1:])
    moving = RandomMapping(3, 6, seed=3, resample=True)
    draws = {tuple(_which(moving.targets(teacher), teacher)) for _ in range(20)}
    assert len(draws) > 1
    run_a, run_b = RandomMapping(3, 6, seed=3, resample=True), RandomMapping(3, 6, seed=3, resample=True)
    assert [_which(run_a.targets(teacher), teacher) for _ in range(5)] == \
           [_which(run_b.targets(teacher), teacher) for _ in range(5)]  # reproducible per run
    assert sorted(_which(RandomMapping(6, 6).targets(teacher), teacher)) == list(range(7))


def test_argmin_teacher_direction_picks_closest_student_layer():
    teacher = _states(6)
    # student layers resemble teacher layers 1, 4, 6 -> teacher layers (2, 4, 6) match students (1, 2, 3)
    student = [teacher[0] + 0.1, teacher[1] + 0.1, teacher[4] + 0.1, teacher[6] + 0.1]
    mapping = ArgminMapping(3, 6)
    assert mapping.teacher_layers == [2, 4, 6]
    s_list, t_list = mapping.align(student, teacher)
    assert mapping.last_match == [(1, 2), (2, 4), (3, 6)]
    assert s_list[0] is student[0] and t_list[0] is teacher[0]
    assert [x is y for x, y in zip(s_list[1:], student[1:])] == [True, True, True]
    assert _which(t_list, teacher) == [0, 2, 4, 6]
    # a student layer can serve several teacher layers
    student = [teacher[0], teacher[6], teacher[6], teacher[6]]
    mapping.align(student, teacher)
    assert [s for s, _ in mapping.last_match] == [1, 1, 1]
    with pytest.raises(ValueError, match="direction='student'"):
        mapping.targets(teacher)


def test_argmin_student_direction_and_token_mask():
    teacher = _states(6)
    student = [teacher[0], teacher[3] + 0.2, teacher[5] - 0.2, teacher[6]]
    mapping = ArgminMapping(3, 6, direction="student")
    targets = mapping.targets(teacher, student_states=student)
    assert _which(targets, teacher) == [0, 3, 5, 6]
    # a padded position with a huge error must not change the match
    mask = torch.ones(B, S)
    mask[:, -1] = 0
    student[1] = student[1].clone()
    student[1][:, -1] = 1000.0
    mapping.align(student, teacher, token_mask=mask)
    assert mapping.last_match[0] == (1, 3)
    wide = [torch.zeros(B, S, D + 2) for _ in range(4)]
    with pytest.raises(ValueError, match="project"):
        mapping.align(wide, teacher)


def test_argmin_same_depth_pruned_student_matches_identity():
    teacher = _states(6)
    student = [t + 0.05 for t in teacher]
    mapping = ArgminMapping(6, 6, direction="student")
    mapping.align(student, teacher)
    assert mapping.last_match == [(m, m) for m in range(1, 7)]


def test_fusion_mapping_stack_and_group():
    teacher = [s.abs() + 0.5 for s in _states(6)]
    fused = recursive_fusion(teacher[1:])
    targets = FusionMapping(3, 6).targets(teacher)
    assert targets[0] is teacher[0]
    for m, t in enumerate([2, 4, 6], start=1):
        torch.testing.assert_close(targets[m], fused[t - 1])
    assert targets[3] is teacher[6]  # the top state is its own fusion
    same = FusionMapping(6, 6).targets(teacher)
    for m in range(1, 7):
        torch.testing.assert_close(same[m], fused[m - 1])
    group = FusionMapping(3, 6, scope="group").targets(teacher)
    torch.testing.assert_close(group[1], recursive_fusion([teacher[1], teacher[2]])[0])
    torch.testing.assert_close(group[3], recursive_fusion([teacher[5], teacher[6]])[0])
    learned = HighwayFusion(D, 6)
    hw = FusionMapping(3, 6, fuser=learned).targets(teacher)
    torch.testing.assert_close(hw[1], learned(teacher[1:])[1])


def test_fusion_mapping_student_window():
    teacher, student = _states(6), [s.abs() + 0.5 for s in _states(3, seed=2)]
    mapping = FusionMapping(3, 6, student_window=2)
    s_list, t_list = mapping.align(student, teacher)
    assert s_list[0] is student[0] and len(s_list) == len(t_list) == 4
    want = window_fusion(student[1:], 2)
    for got, exp in zip(s_list[1:], want):
        torch.testing.assert_close(got, exp)


def test_mapping_errors():
    with pytest.raises(ValueError, match="no deeper"):
        build_mapping("uniform", 7, 6)
    with pytest.raises(ValueError, match="name='every'"):
        build_mapping("every", 3, 6)
    with pytest.raises(ValueError, match="teacher_states has 6 entries: expected 7"):
        build_mapping("uniform", 3, 6).targets(_states(5))
    with pytest.raises(ValueError, match="teacher_layers"):
        ArgminMapping(3, 6, teacher_layers=[0, 7])


def test_projection_identity_and_learned():
    same = HiddenProjection(D, D)
    x = torch.randn(B, S, D)
    assert same(x) is x and list(same.parameters()) == []
    proj = HiddenProjection(4, D, num_states=3, shared=False)
    states = [torch.randn(B, S, 4) for _ in range(3)]
    out = proj(states)
    assert [o.shape for o in out] == [(B, S, D)] * 3
    torch.testing.assert_close(out[2], states[2] @ proj.maps[2].weight.T + proj.maps[2].bias)
    shared = HiddenProjection(4, D)
    assert len(shared.maps) == 1 and torch.equal(shared(states[1], index=1), shared(states)[1])
    sum(o.sum() for o in out).backward()
    assert all(m.weight.grad is not None for m in proj.maps)
    with pytest.raises(ValueError, match="student_dim=4"):
        proj(torch.randn(B, S, 5))
