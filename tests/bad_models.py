"""Models that fail the way a user's own code does (imported by tests/test_cli.py's bad input)."""


class NeedsAnArgument:
    def __init__(self, data, required):
        self.required = required

    def __call__(self, **batch):
        pass


class Flaky:
    """Regression that trains or fails by ``mode``: ``ok`` trains, ``diverge`` gives a non-finite
    loss after its first steps (a diverging job), ``fail`` raises an error of its own (a bug)."""

    def __init__(self, data, mode="ok"):
        self.mode = mode
        self.calls = 0

    def __call__(self, x, y=None, index=None, size=None):
        import pyro
        import pyro.distributions as dist

        self.calls += 1
        if self.mode == "fail" and self.calls > 6:  # after the first steps
            raise ValueError("a bug in the user's model")
        zero = x.new_zeros(())
        weight = pyro.sample("weight", dist.Normal(zero, 1.0).expand([x.shape[-1]]).to_event(1))
        mean = (x * weight).sum(-1)
        if self.mode == "diverge" and self.calls > 6:
            mean = mean * float("nan")
        with pyro.plate("data", size, subsample=index):
            pyro.sample("obs", dist.Normal(mean, 1.0), obs=y)
