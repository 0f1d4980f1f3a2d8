import numpy as np
import pytest
import torch

from qrl import ops


def test_nstep_targets_match_hand_computed_values():
    g = 0.5
    # one env, 5 steps; episode terminates at step 1, is truncated at step 3
    r = np.array([[1.0], [2.0], [4.0], [8.0], [16.0]])
    term = np.array([[0], [1], [0], [0], [0]], dtype=bool)
    trunc = np.array([[0], [0], [0], [1], [0]], dtype=bool)
    ret, disc, last = ops.nstep_targets(r, term, trunc, g, n=3, num_starts=3)
    # t=0: 1 + .5*2, terminated at 1 -> no bootstrap
    # t=1: 2, terminated -> no bootstrap
    # t=2: 4 + .5*8, truncated at 3 -> bootstrap from next_obs[3] with .5^2
    np.testing.assert_allclose(ret[:, 0], [2.0, 2.0, 8.0])
    np.testing.assert_allclose(disc[:, 0], [0.0, 0.0, 0.25])
    np.testing.assert_array_equal(last[:, 0], [1, 1, 3])


def test_nstep_targets_without_episode_ends_use_full_windows():
    r = np.ones((4, 2))
    none = np.zeros((4, 2), dtype=bool)
    ret, disc, last = ops.nstep_targets(r, none, none, 0.9, n=3, num_starts=2)
    np.testing.assert_allclose(ret, np.full((2, 2), 1 + 0.9 + 0.81))
    np.testing.assert_allclose(disc, np.full((2, 2), 0.729))
    np.testing.assert_array_equal(last, [[2, 2], [3, 3]])


def test_one_step_targets_are_plain_transitions():
    r = np.array([[1.0], [2.0]])
    term = np.array([[0], [1]], dtype=bool)
    ret, disc, last = ops.nstep_targets(r, term, np.zeros_like(term), 0.99, n=1, num_starts=2)
    np.testing.assert_allclose(ret[:, 0], [1.0, 2.0])
    np.testing.assert_allclose(disc[:, 0], [0.99, 0.0])
    np.testing.assert_array_equal(last[:, 0], [0, 1])


def test_nstep_targets_need_a_long_enough_window():
    with pytest.raises(ValueError):
        ops.nstep_targets(np.zeros((3, 1)), np.zeros((3, 1), bool), np.zeros((3, 1), bool), 0.9, 3, 2)


def test_apex_epsilons_and_linear_schedule():
    eps = [ops.apex_epsilon(i, 8) for i in range(8)]
    assert eps[0] == pytest.approx(0.4) and eps[-1] == pytest.approx(0.4**8)
    assert all(a > b for a, b in zip(eps, eps[1:]))
    assert ops.linear_schedule(1.0, 0.1, 100, 50) == pytest.approx(0.55)
    assert ops.linear_schedule(1.0, 0.1, 100, 500) == pytest.approx(0.1)


def test_polyak_update():
    target, online = [torch.zeros(3), torch.full((2, 2), 4.0)], [torch.ones(3), torch.zeros(2, 2)]
    ops.polyak_update(target, online, 0.25)
    np.testing.assert_allclose(target[0].numpy(), 0.25)
    np.testing.assert_allclose(target[1].numpy(), 3.0)
    ops.polyak_update(iter(target), iter(online), 1.0)  # any iterables, e.g. module.parameters()
    np.testing.assert_allclose(target[0].numpy(), 1.0)
    np.testing.assert_allclose(target[1].numpy(), 0.0)
    with pytest.raises(ValueError, match="2 target tensors for 1 online"):
        ops.polyak_update(target, online[:1], 0.5)


def test_adam_is_torchs_adam_with_the_fused_kernel():
    torch.manual_seed(0)
    nets = [torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    fused = ops.adam(nets[0].parameters(), lr=1e-2, eps=1e-5)
    plain = torch.optim.Adam(nets[1].parameters(), lr=1e-2, eps=1e-5, foreach=False)
    assert fused.param_groups[0]["fused"] is True and fused.param_groups[0]["eps"] == 1e-5
    x = torch.randn(32, 4)
    initial = [p.detach().clone() for p in nets[0].parameters()]
    for _ in range(20):
        for net, opt in zip(nets, (fused, plain)):
            opt.zero_grad()
            net(x).pow(2).mean().backward()
            opt.step()
    for a, b in zip(*(net.parameters() for net in nets)):  # the same algorithm, to float rounding
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert all(not torch.equal(a, b) for a, b in zip(initial, nets[0].parameters()))  # both really stepped
    # A caller's choice stands; so does torch's default where the fused kernel cannot run.
    assert ops.adam(nets[0].parameters(), lr=1e-3, foreach=True).param_groups[0]["foreach"] is True
    groups = ops.adam([{"params": list(nets[0].parameters())}], lr=1e-3)
    assert groups.param_groups[0]["fused"] is True


@pytest.mark.parametrize("max_norm", [0.05, 1e6])  # clipped; far above the norm: left as they are
def test_clip_grad_norm_equals_torchs(max_norm):
    nets = [torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    for net in nets:
        net(torch.randn(16, 4, generator=torch.Generator().manual_seed(1))).pow(2).sum().backward()
    params = [list(net.parameters()) for net in nets]
    params[0][-1].grad = None  # a parameter without a gradient is skipped, as torch skips it
    params[1][-1].grad = None
    ours = ops.clip_grad_norm(params[0], max_norm)
    torchs = torch.nn.utils.clip_grad_norm_(params[1], max_norm)
    torch.testing.assert_close(ours, torchs)
    for a, b in zip(params[0][:-1], params[1][:-1]):
        torch.testing.assert_close(a.grad, b.grad)
    norm_after = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params[0][:-1]]))
    assert norm_after == pytest.approx(min(max_norm, ours.item()), rel=1e-4)


def test_gae_by_hand_with_a_termination_and_a_truncation():
    g, lam = 0.5, 0.5
    r = np.array([[1.0], [1.0], [1.0], [1.0]])
    v = np.array([[2.0], [4.0], [6.0], [8.0]])
    nv = np.array([[4.0], [100.0], [6.0], [10.0]])  # step 1 terminated (its next value is ignored); step 3 truncated
    term = np.array([[0], [1], [0], [0]], dtype=bool)
    ends = np.array([[0], [1], [0], [1]], dtype=bool)
    adv, ret = ops.gae(r, v, nv, term, ends, g, lam)
    # deltas: t0 = 1 + .5*4 - 2 = 1; t1 = 1 - 4 = -3 (terminated); t2 = 1 + .5*6 - 6 = -2; t3 = 1 + .5*10 - 8 = -2
    # advantages: t3 = -2 (end); t2 = -2 + .25*-2 = -2.5; t1 = -3 (end); t0 = 1 + .25*-3 = 0.25
    np.testing.assert_allclose(adv[:, 0], [0.25, -3.0, -2.5, -2.0])
    np.testing.assert_allclose(ret[:, 0], [2.25, 1.0, 3.5, 6.0])


def test_vtrace_on_policy_equals_lambda_one_returns_and_clips_off_policy():
    g = 0.9
    T = 5
    rng = np.random.default_rng(0)
    r, v, nv = (torch.tensor(rng.normal(size=(T, 3))) for _ in range(3))
    nv[:-1] = v[1:]  # consistent values within the unroll where episodes continue
    term = torch.zeros(T, 3, dtype=torch.bool)
    term[2, 1] = True
    ends = term.clone()
    ends[3, 2] = True
    nv[3, 2] = 7.0  # truncated: bootstrap from the final observation's value
    vs, pg = ops.vtrace(torch.zeros(T, 3, dtype=torch.float64), r, v, nv, term, ends, g)
    adv, ret = ops.gae(r, v, nv, term, ends, g, 1.0)
    torch.testing.assert_close(vs, ret)  # rho = c = 1: V-trace is the lambda = 1 return
    torch.testing.assert_close(pg, adv)  # and its advantages are GAE's with lambda = 1
    # Off-policy, by hand: one step, rho = e^1 clipped to 1 for the value target, 0.5 unclipped
    vs1, pg1 = ops.vtrace(torch.tensor([[1.0], [float(np.log(0.5))]]), torch.tensor([[1.0], [1.0]]),
                          torch.tensor([[0.0], [0.0]]), torch.tensor([[2.0], [2.0]]),
                          torch.zeros(2, 1, dtype=torch.bool), torch.tensor([[False], [True]]), 0.5)
    # t1 (end): delta = 0.5 * (1 + .5*2 - 0) = 1 -> vs1 = 1; t0: delta = 1 * (1 + .5*2) = 2, + .5 * 1 * 1 -> 2.5
    torch.testing.assert_close(vs1[:, 0], torch.tensor([2.5, 1.0]))
    # pg: t0 = min(1, e) * (1 + .5 * vs_1=1) = 1.5; t1 = 0.5 * (1 + .5 * 2) = 1
    torch.testing.assert_close(pg1[:, 0], torch.tensor([1.5, 1.0]))


def test_clipped_surrogate_by_hand():
    ratio = torch.tensor([0.5, 1.0, 1.5, 1.5])
    adv = torch.tensor([1.0, 2.0, 1.0, -1.0])
    # min(rA, clip(r)A): 0.5 (r below the clip, A > 0: unclipped), 2, 1.2 (clipped), -1.5 (A < 0: unclipped)
    assert ops.clipped_surrogate(ratio, adv, 0.2).item() == pytest.approx(-(0.5 + 2 + 1.2 - 1.5) / 4)


def test_clipped_value_loss_by_hand():
    v, old, ret = torch.tensor([3.0, 0.0]), torch.tensor([1.0, 1.0]), torch.tensor([2.0, 0.0])
    assert ops.value_loss(v, old, ret).item() == pytest.approx((1 + 0) / 2)
    # clip 0.5: item 0 moves to 1.5 -> error .25, unclipped 1 -> max 1; item 1 moves to 0.5 -> .25 vs 0 -> .25
    assert ops.value_loss(v, old, ret, clip=0.5).item() == pytest.approx((1 + 0.25) / 2)


def test_retrace_follows_a_hand_computed_trace():
    """Three steps of one env, gamma 0.5, lambda 0.8; pi/mu of the actions 2, 0.5, 1 (so c = 0.8,
    0.4, 0.8); the episode continues past the unroll. By hand, from the back:
      G2 = r2 + g V2                                  = 1 + .5 * 4              = 3
      G1 = r1 + g (V1 + c2 (G2 - Q2))                 = 0 + .5 (2 + .8 (3 - 1))  = 1.8
      G0 = r0 + g (V0 + c1 (G1 - Q1))                 = 1 + .5 (1 + .4 (1.8 - 3)) = 1.26"""
    col = lambda *x: torch.tensor(x, dtype=torch.float64)[:, None]
    q_taken, next_values, rewards = col(5.0, 3.0, 1.0), col(1.0, 2.0, 4.0), col(1.0, 0.0, 1.0)
    log_rhos = torch.log(col(2.0, 0.5, 1.0))
    no = torch.zeros(3, 1, dtype=torch.bool)
    targets = ops.retrace(q_taken, next_values, rewards, log_rhos, no, no, gamma=0.5, lam=0.8)
    assert targets[:, 0].tolist() == pytest.approx([1.26, 1.8, 3.0])
    # An episode end at step 1 cuts the trace there (G1 bootstraps from V1 alone); a termination
    # there drops the bootstrap too.
    ends = torch.tensor([[False], [True], [False]])
    cut = ops.retrace(q_taken, next_values, rewards, log_rhos, no, ends, gamma=0.5, lam=0.8)
    assert cut[:, 0].tolist() == pytest.approx([1 + .5 * (1 + .4 * (1.0 - 3)), 1.0, 3.0])
    dead = ops.retrace(q_taken, next_values, rewards, log_rhos, ends, ends, gamma=0.5, lam=0.8)
    assert dead[1, 0].item() == pytest.approx(0.0)


def test_retrace_on_policy_with_lambda_one_is_the_discounted_return_bootstrapped_at_the_end():
    T, g = 4, 0.9
    rewards = torch.arange(1.0, T + 1, dtype=torch.float64)[:, None]
    q_taken = torch.full((T, 1), 7.0, dtype=torch.float64)  # any values: on-policy they cancel
    next_values = torch.full((T, 1), 7.0, dtype=torch.float64)
    no = torch.zeros(T, 1, dtype=torch.bool)
    targets = ops.retrace(q_taken, next_values, rewards, torch.zeros(T, 1, dtype=torch.float64), no, no, g, 1.0)
    expected = sum(g ** k * (k + 1) for k in range(T)) + g ** T * 7.0
    assert targets[0, 0].item() == pytest.approx(expected)
