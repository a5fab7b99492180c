"""The shared encoding helper: devices, precisions, the exact inference rewrites and FLOP counts."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from saig_core import build_model
from saig_core.model.config import BACKBONE_PRESETS
from saig_core.model.flops import branch_macs
from saig_core.runtime.device import DeviceError, cpu_has_native_bf16, resolve_device, resolve_precision
from saig_core.runtime.encode import Encoder, encode_batches, fold_batchnorm

GROUND, AERIAL = (32, 128), (64, 64)
no_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (this machine has none)")
no_mps = pytest.mark.skipif(not (torch.backends.mps.is_available()), reason="needs an Apple GPU (MPS)")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_model("saig_micro", pool="smd", ground_size=GROUND, aerial_size=AERIAL).eval()
    for bn in (x for x in m.modules() if isinstance(x, torch.nn.BatchNorm2d)):
        bn.running_mean.uniform_(-0.3, 0.3)
        bn.running_var.uniform_(0.3, 3.0)
        bn.weight.data.uniform_(0.5, 1.5)
    return m


def _batches(n_batches=3, size=AERIAL, batch=4):
    g = torch.Generator().manual_seed(0)
    return [torch.rand(batch, 3, *size, generator=g) * 2 - 1 for _ in range(n_batches)]


def test_fp32_encoder_matches_the_model_and_leaves_it_untouched(model):
    before = copy.deepcopy(model.state_dict())
    batches = _batches()
    out = list(encode_batches(model, "aerial", batches, device="cpu", precision="fp32"))
    with torch.no_grad():
        expected = [model.encode_aerial(b) for b in batches]
    for o, e in zip(out, expected, strict=True):
        assert o.dtype == torch.float32 and o.device.type == "cpu"
        torch.testing.assert_close(o, e, atol=2e-6, rtol=0)
    out[0][0] = 0.0  # ordinary tensors: callers may edit them in place
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_batchnorm_folding_is_exact():
    seq = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU())
    seq[1].running_mean.uniform_(-1, 1)
    seq[1].running_var.uniform_(0.1, 4)
    seq[1].weight.data.uniform_(-2, 2)
    seq.eval()
    x = torch.randn(2, 3, 9, 9)
    expected = seq(x)
    folded = fold_batchnorm(copy.deepcopy(seq))
    assert isinstance(folded[1], torch.nn.Identity)
    torch.testing.assert_close(folded(x), expected, atol=1e-5, rtol=1e-5)


def test_encoder_is_lazy_and_keeps_input_checks(model):
    encoder = Encoder(model, device="cpu")
    calls = []

    def batches():
        for b in _batches(2):
            calls.append(1)
            yield b

    it = encoder.encode_batches("aerial", batches())
    assert calls == []
    next(it)
    assert calls == [1]
    with pytest.raises(ValueError, match="NaN"):
        encoder.encode("ground", torch.full((1, 3, *GROUND), float("nan")))
    with pytest.raises(ValueError, match="branch must be"):
        encoder.encode("satellite", _batches(1)[0])
    assert encoder.descriptor_dim == 512 and encoder.input_size("ground") == GROUND


def test_bf16_on_cpu_stays_close_to_fp32(model):
    batch = _batches(1, size=GROUND)[0]
    fp32 = Encoder(model, device="cpu", precision="fp32").encode("ground", batch)
    bf16 = Encoder(model, device="cpu", precision="bf16").encode("ground", batch)
    assert bf16.dtype == torch.float32
    assert F.cosine_similarity(fp32, bf16).min() > 0.995


def test_precision_choice():
    cpu = torch.device("cpu")
    assert resolve_precision(cpu, "auto") == "fp32"
    assert resolve_precision(cpu, "fast") == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert resolve_precision(cpu, "fp16") == "fp16"
    with pytest.raises(DeviceError, match="unknown precision 'int4'"):
        resolve_precision(cpu, "int4")


def test_device_choice():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else
                                           "mps" if torch.backends.mps.is_available() else "cpu")
    with pytest.raises(DeviceError, match="unsupported device 'tpu'"):
        resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message when CUDA is absent")
def test_asking_for_a_missing_gpu_says_so():
    with pytest.raises(DeviceError, match="no CUDA GPU"):
        resolve_device("cuda")


@no_cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16", "auto"])
def test_cuda_encoding_matches_cpu_fp32(model, precision):
    batch = _batches(1)[0]
    ref = Encoder(model, device="cpu", precision="fp32").encode("aerial", batch)
    enc = Encoder(model, device="cuda", precision=precision)
    out = enc.encode("aerial", batch)
    assert out.device.type == "cpu" and out.dtype == torch.float32
    cuda_auto = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    assert enc.precision == (cuda_auto if precision == "auto" else precision)
    assert F.cosine_similarity(ref, out).min() > 0.995


@no_mps
def test_mps_encoding_matches_cpu_fp32(model):
    batch = _batches(1)[0]
    ref = Encoder(model, device="cpu").encode("aerial", batch)
    out = Encoder(model, device="mps").encode("aerial", batch)
    assert F.cosine_similarity(ref, out).min() > 0.999


@pytest.mark.parametrize("preset, gmac", [("saig_s", 4.41), ("saig_d", 6.62)])
def test_mac_count_matches_the_published_compute(preset, gmac):
    cfg = BACKBONE_PRESETS[preset]
    assert round(branch_macs(cfg, (256, 256)) / 1e9, 2) == gmac
    assert branch_macs(cfg, (128, 512)) == branch_macs(cfg, (256, 256))  # same 256 tokens


@pytest.mark.parametrize("pool", ["gap", "smd"])
def test_mac_count_agrees_with_torch_flop_counter(pool):
    m = build_model("saig_micro", pool=pool, ground_size=GROUND, aerial_size=AERIAL).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):  # attention as countable matmuls
        m.aerial(torch.zeros(1, 3, *AERIAL))
    assert counter.get_total_flops() == 2 * branch_macs(m.cfg.backbone, AERIAL, pool)
