"""A CuTeDSL decode launcher stand-in for CPU tests of run()'s variant choice (nothing compiles or runs)."""
import torch


class FakeDecodeLaunches:
    """Replaces the CuTeDSL launcher factory by fakes that record (spec, args) of every launch.
    `made`: one fake per variant built; `call(B, state_dtype, tile)` runs gdn's CuTeDSL decode on zero CPU
    tensors (Qwen3-Next heads, vk pool of 8 slots) and returns the (spec, args) it launched."""
    H, HV, K, V, S = 16, 32, 128, 128, 8

    def __init__(self, monkeypatch):
        from gdn.nvidia.cutedsl import _common as C
        self.made, self.used = [], []
        outer = self

        class Fake:
            def __init__(self, spec):
                self.spec = spec
                outer.made.append(self)

            def __call__(self, *args):
                outer.used.append((self.spec, args))

        class Stream:
            cuda_stream = 0

        monkeypatch.setattr(C, "_LAUNCHERS", {})
        monkeypatch.setattr(C, "_BY_SPEC", {})
        monkeypatch.setattr(C, "_launcher",
                            lambda spec: C._BY_SPEC.get(spec) or C._BY_SPEC.setdefault(spec, Fake(spec)))
        monkeypatch.setattr(torch.cuda, "current_stream", lambda *a, **k: Stream())

    def call(self, B, state_dtype=torch.float32, tile=None):
        from gdn.nvidia.cutedsl import decode as D
        H, HV, K, V, S = self.H, self.HV, self.K, self.V, self.S
        z = lambda *s: torch.zeros(*s, dtype=torch.bfloat16)  # noqa: E731
        D.decode(z(B, H, K), z(B, H, K), z(B, HV, V), z(B, HV), z(B, HV), torch.zeros(HV), torch.zeros(HV),
                 torch.zeros(S, HV, V, K, dtype=state_dtype), torch.arange(B, dtype=torch.int32) % S,
                 z(B, HV, V), scale=0.1, use_qk_l2norm=True, state_layout="vk", _tile=tile)
        return self.used[-1]
