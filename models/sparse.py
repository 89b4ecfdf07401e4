"""Ratings with per-user and per-item latents: each minibatch touches a few rows of big tables."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.infer.autoguide import AutoNormal

from pyrotrain.data import split
from pyrotrain.errors import PyrotrainError

GLOBALS = ("mu", "weight", "sigma", "user_sd", "item_sd")


def make_ratings(
    users: int = 2000,
    items: int = 1000,
    observations: int = 50000,
    features: int = 2,
    rank: int = 2,
    noise: float = 0.5,
    eval_fraction: float = 0.2,
    seed: int = 0,
):
    """Synthetic ratings ``y`` of ``item`` by ``user``, with covariates ``x`` and known truth.

    Users' activity and items' popularity are log-normal, so a few users and items have many
    ratings and most have few (the long tail that per-row adaptive step sizes are for). The
    truth, drawn with ``seed``: ``y = 3 + x w + a_user + b_item + <p_user, q_item> + noise e``,
    ``a ~ N(0, 0.7)``, ``b ~ N(0, 0.5)``, ``p, q ~ N(0, 0.5)`` (``rank`` columns), ``w ~ N(0, 1)``.
    ``user`` and ``item`` are int64 ids; the split is random.
    """
    for key, value, least in [
        ("data.users", users, 1),
        ("data.items", items, 1),
        ("data.observations", observations, 2),
        ("data.features", features, 0),
        ("data.rank", rank, 0),
    ]:
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise PyrotrainError(f"must be an integer of at least {least}", key=key, value=value)
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    activity = (1.0 * randn(users)).exp()
    popularity = (1.0 * randn(items)).exp()
    user = torch.multinomial(activity, observations, replacement=True, generator=g)
    item = torch.multinomial(popularity, observations, replacement=True, generator=g)
    a, b = 0.7 * randn(users), 0.5 * randn(items)
    p, q = 0.5 * randn(users, rank), 0.5 * randn(items, rank)
    w = randn(features)
    x = randn(observations, features)
    y = 3.0 + x @ w + a[user] + b[item] + (p[user] * q[item]).sum(-1) + noise * randn(observations)
    info = {
        "source": "synthetic ratings",
        "users": users,
        "items": items,
        "noise": noise,
        "true_weight": w.tolist(),
    }
    return split({"user": user, "item": item, "x": x, "y": y}, eval_fraction, seed, info)


class SparseRatings:
    """Ratings regression with per-user and per-item effects and factors (matrix factorisation).

    For rating ``n`` of item ``i_n`` by user ``u_n`` with covariates ``x_n``::

        y_n ~ N(mu + x_n w + a_{u_n} + b_{i_n} + <p_{u_n}, q_{i_n}>, sigma)
        a_u ~ N(0, user_sd), p_u ~ N(0, 1/2)^rank  for each of the U users
        b_i ~ N(0, item_sd), q_i ~ N(0, 1/2)^rank  for each of the I items
        mu ~ N(0, 10), w ~ N(0, 1), sigma, user_sd, item_sd ~ LogNormal(-1, 1)

    A minibatch of ratings touches only its users' and items' rows of the ``U``- and ``I``-row
    latent tables: they are sampled in ``users`` and ``items`` plates subsampled to the ids in the
    batch, so their guide parameters get gradients in those rows only (what AdagradRMSProp's
    per-element step sizes suit). The ELBO stays unbiased: the ratings are scaled by ``N / B``,
    and user ``u``'s prior and guide terms by ``(N / B) c_u / n_u`` (``c_u``: its ratings in the
    batch, ``n_u``: in the training set), which sums to 1 over any epoch. Users and items without
    training ratings have no data: their posterior is their prior, which :meth:`evaluate` uses.

    The guide (``guide=model``) is mean-field Normal: an AutoNormal over the globals, and
    ``{user,item}_{effect,factor}.{loc,log_scale}`` tables for the rows (the scales are stored
    as their logs and exponentiated for the batch's rows only).

    :param rank: columns of the user and item factors ``p``, ``q`` (0: effects only).
    :param sparse_grad: the guide looks up the batch's rows with a sparse backward: the
        gradients of its tables are sparse tensors of those rows (as ``nn.Embedding(sparse=True)``
        gives), so a backward pass costs the batch, not the tables. Needs an optimizer that takes
        them: a ``sparse: true`` group (or a dense group, which makes them dense first); Pyro's
        optimizers refuse them. Off: Pyro indexes the tables and the gradients are dense.
    """

    parallel_predict = True  # pyrotrain-predict may draw all samples at once (vectorized)

    def __init__(self, data, rank: int = 2, sparse_grad: bool = False):
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
            raise PyrotrainError(
                "rank must be a non-negative integer", key="model.rank", value=rank
            )
        for name in ("user", "item", "x", "y"):
            if name not in data.train:
                raise PyrotrainError(
                    f"the sparse model needs data with '{name}'",
                    key="data",
                    value=sorted(data.train),
                    hint="Use data=ratings, or a loader that yields user, item, x and y",
                )
        if not isinstance(sparse_grad, bool):
            raise PyrotrainError(
                "sparse_grad must be true or false", key="model.sparse_grad", value=sparse_grad
            )
        self.rank = rank
        self.sparse_grad = sparse_grad
        self.features = data.train["x"].shape[-1]
        user, item = data.train["user"], data.train["item"]
        # Ids run from 0; without counts in info, the largest id seen anywhere sets the size.
        every = {
            k: torch.cat([data.train[k], data.eval.get(k, data.train[k][:0])])
            for k in ("user", "item")
        }
        self.users = int(data.info.get("users", int(every["user"].max()) + 1))
        self.items = int(data.info.get("items", int(every["item"].max()) + 1))
        self.user_counts = torch.bincount(user, minlength=self.users)
        self.item_counts = torch.bincount(item, minlength=self.items)
        self.guide = RatingsGuide(self)

    def _rows(self, name: str, ids: torch.Tensor, counts: torch.Tensor, n: int):
        """The plate over the batch's distinct ids and each one's share of its prior term."""
        uniq, inverse, in_batch = torch.unique(ids, return_inverse=True, return_counts=True)
        size = counts.shape[0]
        plate = pyro.plate(f"{name}s", size, subsample=uniq, dim=-1)
        # The plate scales by size / len(uniq); this makes the net scale n/B * c_u / n_u.
        share = (n / ids.shape[0]) * in_batch / counts[uniq] * (len(uniq) / size)
        return plate, poutine.scale(scale=share.to(torch.get_default_dtype())), inverse

    def _sample_rows(self, name: str, prior_sd):
        zero = torch.zeros(())
        effect = pyro.sample(f"{name}_effect", dist.Normal(zero, prior_sd))
        factor = None
        if self.rank:
            factor = pyro.sample(
                f"{name}_factor", dist.Normal(zero, 0.5).expand([self.rank]).to_event(1)
            )
        return effect, factor

    def __call__(self, user, item, x, y=None, index=None, size=None):
        n = user.shape[0] if size is None else size
        zero = torch.zeros(())
        mu = pyro.sample("mu", dist.Normal(zero, 10.0))
        weight = pyro.sample("weight", dist.Normal(zero, 1.0).expand([self.features]).to_event(1))
        sigma = pyro.sample("sigma", dist.LogNormal(zero - 1, 1.0))
        user_sd = pyro.sample("user_sd", dist.LogNormal(zero - 1, 1.0))
        item_sd = pyro.sample("item_sd", dist.LogNormal(zero - 1, 1.0))
        users, user_scale, u = self._rows("user", user, self.user_counts, n)
        with users, user_scale:
            a, p = self._sample_rows("user", user_sd)
        items, item_scale, i = self._rows("item", item, self.item_counts, n)
        with items, item_scale:
            b, q = self._sample_rows("item", item_sd)
        if a.shape[-1] != int(u.max()) + 1 or b.shape[-1] != int(i.max()) + 1:
            raise _needs_own_guide("sparse")
        mean = mu + (x * weight).sum(-1) + a[..., u] + b[..., i]
        if self.rank:
            mean = mean + (p[..., u, :] * q[..., i, :]).sum(-1)
        with pyro.plate("data", n, subsample=index, dim=-1):
            return pyro.sample("obs", dist.Normal(mean, sigma), obs=y)

    def evaluate(self, guide, data, num_samples: int = 100) -> dict:
        """Held-out RMSE and log predictive density, against predicting the training mean."""
        ev = data.eval
        y, y_train = ev["y"], data.train["y"]
        if "user_effect.loc" not in pyro.get_param_store():
            raise PyrotrainError(
                "the sparse model is trained and evaluated with its own guide",
                key="guide",
                hint="Use guide=model (its config's default)",
            )
        preds, log_liks = [], []
        for _ in range(num_samples):
            g = self.guide.sample_all(ev["user"], ev["item"], ev["x"])
            mean = g["mu"] + (ev["x"] * g["weight"]).sum(-1)
            mean = mean + g["user_effect"][ev["user"]] + g["item_effect"][ev["item"]]
            if self.rank:
                mean = mean + (g["user_factor"][ev["user"]] * g["item_factor"][ev["item"]]).sum(-1)
            preds.append(mean)
            log_liks.append(dist.Normal(mean, g["sigma"]).log_prob(y))
        pred = torch.stack(preds).mean(0)
        lppd = torch.stack(log_liks).logsumexp(0) - math.log(num_samples)
        base_mean, base_sd = y_train.mean(), y_train.std()
        out = {
            "n": int(y.shape[0]),
            "rmse": (pred - y).pow(2).mean().sqrt().item(),
            "lppd": lppd.mean().item(),
            "baseline_rmse": (base_mean - y).pow(2).mean().sqrt().item(),
            "baseline_lppd": dist.Normal(base_mean, base_sd).log_prob(y).mean().item(),
        }
        if "noise" in data.info:
            out["true_noise"] = float(data.info["noise"])
        return out


def _needs_own_guide(name: str) -> PyrotrainError:
    return PyrotrainError(
        f"the {name} model's per-row latents follow the minibatch, which autoguides cannot do",
        key="guide",
        hint="Use guide=model (its config's default)",
    )


class RatingsGuide:
    """Mean-field Normal guide: AutoNormal for the globals, loc/scale tables for the rows, read
    inside the users' and items' subsampled plates so that a step touches the batch's rows."""

    def __init__(self, model: SparseRatings, init_scale: float = 0.1):
        self.model = model
        self.init_scale = init_scale
        self.globals = AutoNormal(poutine.block(model, expose=list(GLOBALS)))

    def _table(self, name: str, rows: int, event: tuple[int, ...], spread: float, uniq=None):
        """(loc, scale) of a table: its rows ``uniq`` inside the surrounding subsampled plate,
        else all rows.

        Inside the plate Pyro indexes the stored tensors (``event_dim``) and records the rows
        (``_pyro_subsample``, which sparse optimizer groups read); with ``sparse_grad`` the
        guide indexes them itself, with a sparse backward. The scale is stored as its log (the
        unconstrained value a ``constraints.positive`` parameter would hold) and exponentiated
        after indexing, so a step transforms the batch's rows only.
        """

        def init_loc():
            return spread * torch.randn(rows, *event)

        def init_log_scale():
            return torch.full((rows, *event), self.init_scale).log()

        if uniq is not None and self.model.sparse_grad:
            loc = take_rows(pyro.param(f"{name}.loc", init_loc), uniq)
            log_scale = take_rows(pyro.param(f"{name}.log_scale", init_log_scale), uniq)
        else:
            loc = pyro.param(f"{name}.loc", init_loc, event_dim=len(event))
            log_scale = pyro.param(f"{name}.log_scale", init_log_scale, event_dim=len(event))
        return loc, log_scale.exp()

    def _tables(self, name: str, rows: int, uniq=None):
        """(loc, scale) of the effects and of the factors (None without factors)."""
        effect = self._table(f"{name}_effect", rows, (), 0.0, uniq)
        if not self.model.rank:
            return effect, None
        # Factors start small and random: all-zero factors would have zero gradient.
        return effect, self._table(f"{name}_factor", rows, (self.model.rank,), 0.1, uniq)

    def _sample_rows(self, name: str, rows: int, uniq):
        (e_loc, e_scale), factor = self._tables(name, rows, uniq)  # the plate's rows
        pyro.sample(f"{name}_effect", dist.Normal(e_loc, e_scale))
        if factor is not None:
            f_loc, f_scale = factor
            pyro.sample(f"{name}_factor", dist.Normal(f_loc, f_scale).to_event(1))

    def __call__(self, user, item, x, y=None, index=None, size=None):
        m = self.model
        n = user.shape[0] if size is None else size
        self.globals(user, item, x, y=y, index=index, size=size)
        users, user_scale, _ = m._rows("user", user, m.user_counts, n)
        with users as uniq, user_scale:
            self._sample_rows("user", m.users, uniq)
        items, item_scale, _ = m._rows("item", item, m.item_counts, n)
        with items as uniq, item_scale:
            self._sample_rows("item", m.items, uniq)

    @torch.no_grad()
    def sample_all(self, user, item, x) -> dict:
        """One posterior draw of every latent, all rows; rows without data drawn from the prior."""
        m = self.model
        g = self.globals(user, item, x)  # AutoNormal returns its (constrained) draw
        for name, rows, counts, sd in [
            ("user", m.users, m.user_counts, g["user_sd"]),
            ("item", m.items, m.item_counts, g["item_sd"]),
        ]:
            (e_loc, e_scale), factor = self._tables(name, rows)
            seen = counts > 0
            effect = e_loc + e_scale * torch.randn_like(e_loc)
            g[f"{name}_effect"] = torch.where(seen, effect, sd * torch.randn_like(e_loc))
            if factor is not None:
                f_loc, f_scale = factor
                factor = f_loc + f_scale * torch.randn_like(f_loc)
                prior = 0.5 * torch.randn_like(f_loc)
                g[f"{name}_factor"] = torch.where(seen[:, None], factor, prior)
        return g


class _TakeRows(torch.autograd.Function):
    """``table.index_select(0, index)`` whose backward is a sparse tensor of the index's rows."""

    @staticmethod
    def forward(ctx, table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(index)
        ctx.shape = table.shape
        return table.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (index,) = ctx.saved_tensors
        sparse = torch.sparse_coo_tensor(
            index.unsqueeze(0),
            grad.contiguous(),
            ctx.shape,
            is_coalesced=True,  # the plate's ids are unique and sorted
            check_invariants=False,
        )
        return sparse, None


def take_rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows ``index`` (unique, sorted) of ``table``; its gradient is sparse (only those rows)."""
    return _TakeRows.apply(table, index)
