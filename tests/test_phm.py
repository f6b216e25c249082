"""The PHM weight against an explicit Kronecker sum, and the two merge modes."""

import pytest
import torch

from mixphm.phm import PHMProjection, PHMRule, low_rank_blocks, phm_weight_t


def explicit_kron_sum(rule: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    return sum(torch.kron(rule[i], blocks[i]) for i in range(rule.shape[0]))


@pytest.mark.parametrize(
    ("n", "rank", "d_in", "d_out"),
    [(2, 1, 8, 6), (4, 8, 768, 64), (4, 8, 64, 768), (3, None, 9, 12), (4, 3, 16, 16)],
)
def test_phm_weight_equals_explicit_kron_sum(n, rank, d_in, d_out):
    g = torch.Generator().manual_seed(n * 100 + d_in)
    rule = torch.randn(n, n, n, generator=g, dtype=torch.float64)
    p, q = d_in // n, d_out // n
    if rank is None:
        blocks = torch.randn(n, p, q, generator=g, dtype=torch.float64)
    else:
        left = torch.randn(n, p, rank, generator=g, dtype=torch.float64)
        right = torch.randn(n, rank, q, generator=g, dtype=torch.float64)
        blocks = low_rank_blocks(left, right)
    expected = explicit_kron_sum(rule, blocks)
    assert expected.shape == (d_in, d_out)
    torch.testing.assert_close(phm_weight_t(blocks, rule), expected.T, rtol=1e-12, atol=1e-12)


def test_phm_weight_broadcasts_over_experts():
    g = torch.Generator().manual_seed(0)
    rule = torch.randn(2, 2, 2, generator=g, dtype=torch.float64)
    blocks = torch.randn(3, 2, 4, 5, generator=g, dtype=torch.float64)
    stacked = phm_weight_t(blocks, rule)
    assert stacked.shape == (3, 10, 8)
    for e in range(3):
        torch.testing.assert_close(stacked[e], explicit_kron_sum(rule, blocks[e]).T)


def test_plain_projection_is_its_block():
    blocks = torch.randn(1, 6, 4, dtype=torch.float64)
    torch.testing.assert_close(phm_weight_t(blocks, None), blocks[0].T)


def test_projection_rejects_sizes_not_divisible_by_n():
    with pytest.raises(ValueError, match="divisible by phm_dim=4"):
        PHMProjection(10, 8, 1, 4, 2, PHMRule(4))


def _distinct_experts(rank):
    torch.manual_seed(0)
    rule = PHMRule(2).double()
    proj = PHMProjection(8, 6, 3, 2, rank, rule).double()
    with torch.no_grad():
        for p in proj.parameters():
            p.add_(torch.randn_like(p))
    return proj, rule


def test_merge_by_factors_builds_one_weight_from_averaged_factors():
    proj, rule = _distinct_experts(rank=2)
    weight_t, bias = proj.merged("factors")
    blocks = low_rank_blocks(proj.left.mean(0), proj.right.mean(0))
    torch.testing.assert_close(weight_t, explicit_kron_sum(rule.S, blocks).T)
    torch.testing.assert_close(bias, proj.bias.mean(0))


def test_merge_by_products_averages_expert_weights():
    proj, _ = _distinct_experts(rank=2)
    weight_t, _ = proj.merged("products")
    experts = [proj.expert(e)[0] for e in range(3)]
    torch.testing.assert_close(weight_t, torch.stack(experts).mean(0))
    # with low-rank factors the two modes genuinely differ
    assert not torch.allclose(weight_t, proj.merged("factors")[0])


def test_reference_initialisation():
    torch.manual_seed(0)
    rule = PHMRule(4)
    proj = PHMProjection(768, 64, 4, 4, 8, rule)
    assert rule.S.std().item() == pytest.approx(0.01, rel=0.2)
    bound = 2**0.5 * (6 / (192 + 8)) ** 0.5
    assert proj.left.abs().max().item() <= bound
    assert proj.left.std().item() == pytest.approx(bound / 3**0.5, rel=0.05)
    assert torch.count_nonzero(proj.bias) == 0
    for e in range(1, 4):  # experts start as copies of one another
        assert torch.equal(proj.left[e], proj.left[0])
        assert torch.equal(proj.right[e], proj.right[0])
