"""Many independent L-BFGS minimisations (grid starts × bootstrap resamples) in one jitted JAX loop.

A problem is (start point, row weights). The work for one problem is written for a single lane and
vmapped over a pool of lanes; each loop step makes exactly one objective evaluation per lane (the
start point or a line-search trial), so lanes stay in lock-step without nested loops. A lane that
finishes writes its result and loads the next queued problem, so the cost follows the total number
of evaluations rather than (slowest start) × (number of starts), as a plain vmapped while_loop would.
Once the queue is empty the still-running lanes are packed to the front and only a slice of the
pool is evaluated, which keeps the few slow stragglers at the end cheap.

Compiling the loop costs seconds, so everything that varies is a runtime argument: the objective
takes a `variant` index (scaling.laws uses it to pick the law), and shapes are padded to buckets
(problems, weight rows, data rows). The grid fit, its bootstrap and every law fitted to a table of
similar size then share one compiled loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# objective(theta (p,), row_weights (n,), features (k, n), targets (n,), delta, variant) -> scalar
Objective = Callable[[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]


class Status(IntEnum):
    """Why a problem stopped."""

    RUNNING = 0
    GTOL = 1  # gradient small
    FTOL = 2  # relative decrease at float resolution
    STALLED = 3  # even a steepest-descent step cannot lower f: a numerical minimum of a kinked objective
    MAX_EVALS = 4  # ran out of evaluations: not converged
    NONFINITE = 5  # objective or gradient not finite at the start point


CONVERGED = (Status.GTOL, Status.FTOL, Status.STALLED)


@dataclass(frozen=True)
class LBFGSOptions:
    """Settings of the minimiser; the defaults suit the normalised Huber objectives of scaling.laws."""

    memory: int = 10
    max_evals: int = 300
    gtol: float = 1e-6
    ftol: float = 1e-7
    c1: float = 1e-4
    max_backtracks: int = 30
    pool: int = 256


@dataclass(frozen=True)
class Solutions:
    """One row per problem: final point, objective, status and the work it took."""

    x: np.ndarray
    f: np.ndarray
    status: np.ndarray
    iters: np.ndarray
    evals: np.ndarray

    @property
    def converged(self) -> np.ndarray:
        """Boolean mask of problems that stopped on a convergence test with a finite objective."""
        return np.isin(self.status, [int(s) for s in CONVERGED]) & np.isfinite(self.f)


class _Lane(NamedTuple):
    x: jax.Array  # accepted iterate
    f: jax.Array
    g: jax.Array
    d: jax.Array  # search direction
    t: jax.Array  # trial step along d
    gd: jax.Array  # g·d at x (negative for a descent direction)
    xt: jax.Array  # point evaluated next
    s_mem: jax.Array  # (m, p) past steps, newest last
    y_mem: jax.Array  # (m, p) past gradient changes, newest last
    rho: jax.Array  # (m,) 1 / (s·y)
    n_mem: jax.Array  # valid pairs (the last n_mem rows)
    fresh: jax.Array  # True until the start point has been evaluated
    iters: jax.Array
    evals: jax.Array
    backtracks: jax.Array
    status: jax.Array


def _new_lane(x0: jax.Array, memory: int) -> _Lane:
    p = x0.shape[0]
    zero = jnp.zeros((), x0.dtype)
    izero = jnp.zeros((), jnp.int32)
    return _Lane(
        x=x0,
        f=zero,
        g=jnp.zeros_like(x0),
        d=jnp.zeros_like(x0),
        t=zero,
        gd=zero,
        xt=x0,
        s_mem=jnp.zeros((memory, p), x0.dtype),
        y_mem=jnp.zeros((memory, p), x0.dtype),
        rho=jnp.zeros((memory,), x0.dtype),
        n_mem=izero,
        fresh=jnp.ones((), bool),
        iters=izero,
        evals=izero,
        backtracks=izero,
        status=izero,
    )


def _two_loop(g: jax.Array, s_mem: jax.Array, y_mem: jax.Array, rho: jax.Array, n_mem: jax.Array) -> jax.Array:
    """-H·g with the L-BFGS inverse-Hessian estimate from the valid (newest) memory rows."""
    m = s_mem.shape[0]
    valid = jnp.arange(m) >= m - n_mem

    def backward(j: int, carry: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        q, alphas = carry
        i = m - 1 - j
        alpha = jnp.where(valid[i], rho[i] * jnp.dot(s_mem[i], q), 0.0)
        return q - alpha * y_mem[i], alphas.at[i].set(alpha)

    q, alphas = jax.lax.fori_loop(0, m, backward, (g, jnp.zeros_like(rho)))
    y_new = y_mem[m - 1]
    gamma = jnp.where(n_mem > 0, jnp.dot(s_mem[m - 1], y_new) / jnp.maximum(jnp.dot(y_new, y_new), 1e-30), 1.0)

    def forward(i: int, r: jax.Array) -> jax.Array:
        beta = rho[i] * jnp.dot(y_mem[i], r)
        return r + jnp.where(valid[i], alphas[i] - beta, 0.0) * s_mem[i]

    return -jax.lax.fori_loop(0, m, forward, gamma * q)


def _first_step(g: jax.Array) -> jax.Array:
    # Without curvature information, step at most a unit length along -g (as L-BFGS-B does).
    return jnp.minimum(1.0, 1.0 / jnp.maximum(jnp.linalg.norm(g), 1e-30))


def _lane_step(lane: _Lane, ft: jax.Array, gt: jax.Array, opts: LBFGSOptions) -> _Lane:
    """Consume the evaluation at lane.xt: accept it or backtrack, test convergence, choose the next trial."""
    finite = jnp.isfinite(ft) & jnp.all(jnp.isfinite(gt))
    armijo = finite & (ft <= lane.f + opts.c1 * lane.t * lane.gd)
    accept = jnp.where(lane.fresh, finite, armijo)

    # Curvature pair from an accepted step, skipped unless s·y is safely positive (keeps H positive definite).
    s = lane.xt - lane.x
    y = gt - lane.g
    sy = jnp.dot(s, y)
    push = accept & ~lane.fresh & (sy > 1e-10 * jnp.dot(y, y)) & (sy > 0)
    s_mem = jnp.where(push, jnp.concatenate([lane.s_mem[1:], s[None]]), lane.s_mem)
    y_mem = jnp.where(push, jnp.concatenate([lane.y_mem[1:], y[None]]), lane.y_mem)
    rho = jnp.where(push, jnp.concatenate([lane.rho[1:], (1.0 / jnp.where(push, sy, 1.0))[None]]), lane.rho)
    n_mem = jnp.minimum(lane.n_mem + push.astype(jnp.int32), opts.memory)

    x = jnp.where(accept, lane.xt, lane.x)
    f = jnp.where(accept, ft, lane.f)
    g = jnp.where(accept, gt, lane.g)

    scale = jnp.maximum(jnp.maximum(jnp.abs(lane.f), jnp.abs(ft)), 1e-30)
    conv_g = accept & (jnp.max(jnp.abs(g)) <= opts.gtol)
    conv_f = accept & ~lane.fresh & ((lane.f - ft) <= opts.ftol * scale)

    # Next direction after an accepted step; steepest descent if L-BFGS does not give a descent direction.
    d_new = _two_loop(g, s_mem, y_mem, rho, n_mem)
    descent = jnp.dot(d_new, g) < 0
    n_mem = jnp.where(accept & ~descent, 0, n_mem)
    d_new = jnp.where(descent, d_new, -g)
    t_new = jnp.where(n_mem > 0, 1.0, _first_step(g))

    # Rejected trial: safeguarded quadratic interpolation along d, or a tenfold cut if f was not finite.
    curv = ft - lane.f - lane.gd * lane.t
    t_quad = -lane.gd * lane.t**2 / (2.0 * jnp.where(curv > 0, curv, 1.0))
    t_quad = jnp.where((curv > 0) & finite, jnp.clip(t_quad, 0.1 * lane.t, 0.5 * lane.t), 0.1 * lane.t)
    backtracks = jnp.where(accept, 0, lane.backtracks + 1)
    give_up = ~accept & ~lane.fresh & (backtracks > opts.max_backtracks)
    restart = give_up & (lane.n_mem > 0)  # drop the memory and retry along -g
    stalled = give_up & (lane.n_mem == 0)
    n_mem = jnp.where(restart, 0, n_mem)
    backtracks = jnp.where(restart, 0, backtracks)

    d = jnp.where(accept, d_new, jnp.where(restart, -g, lane.d))
    t = jnp.where(accept, t_new, jnp.where(restart, _first_step(g), t_quad))
    evals = lane.evals + 1
    status = jnp.select(
        [lane.fresh & ~finite, conv_g, conv_f, stalled, evals >= opts.max_evals],
        [int(Status.NONFINITE), int(Status.GTOL), int(Status.FTOL), int(Status.STALLED), int(Status.MAX_EVALS)],
        int(Status.RUNNING),
    )
    return _Lane(
        x=x,
        f=f,
        g=g,
        d=d,
        t=t,
        gd=jnp.dot(d, g),
        xt=x + t * d,
        s_mem=s_mem,
        y_mem=y_mem,
        rho=rho,
        n_mem=n_mem,
        fresh=jnp.zeros((), bool),
        iters=lane.iters + (accept & ~lane.fresh).astype(jnp.int32),
        evals=evals,
        backtracks=backtracks,
        status=status,
    )


def _select(mask: jax.Array, new: _Lane, old: _Lane) -> _Lane:
    def pick(a: jax.Array, b: jax.Array) -> jax.Array:
        return jnp.where(mask.reshape(mask.shape + (1,) * (a.ndim - 1)), a, b)

    return jax.tree.map(pick, new, old)


def _solve(
    objective: Objective,
    opts: LBFGSOptions,
    starts: jax.Array,
    n_problems: jax.Array,
    weights: jax.Array,
    weight_index: jax.Array,
    features: jax.Array,
    targets: jax.Array,
    delta: jax.Array,
    variant: jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    capacity = starts.shape[0]
    pool = opts.pool
    sizes = (pool, max(pool // 8, 1), max(pool // 64, 1))  # lanes evaluated while the queue drains
    value_and_grad = jax.vmap(jax.value_and_grad(objective), in_axes=(0, 0, None, None, None, None))
    new_lanes = jax.vmap(lambda x0: _new_lane(x0, opts.memory))
    step = jax.vmap(lambda lane, ft, gt: _lane_step(lane, ft, gt, opts))

    def evaluate(k: int, xt: jax.Array, pid: jax.Array) -> tuple[jax.Array, jax.Array]:
        # Evaluate only the first k lanes (every running lane is among them); the rest get NaN and are idle.
        ft, gt = value_and_grad(xt[:k], weights[weight_index[pid[:k]]], features, targets, delta, variant)
        pad = pool - k
        return jnp.pad(ft, (0, pad), constant_values=jnp.nan), jnp.pad(gt, ((0, pad), (0, 0)), constant_values=jnp.nan)

    def body(state: tuple) -> tuple:
        lanes, pid, active, next_pid, out_x, out_f, out_i = state
        queued = next_pid < n_problems

        def pack(lanes_pid_active: tuple) -> tuple:
            # Running lanes to the front, so evaluating a leading slice reaches all of them.
            order = jnp.argsort(~lanes_pid_active[2], stable=True)
            return jax.tree.map(lambda a: a[order], lanes_pid_active)

        # While problems are queued every lane is running, so there is nothing to pack.
        lanes, pid, active = jax.lax.cond(queued, lambda lpa: lpa, pack, (lanes, pid, active))
        level = jnp.where(queued, 0, jnp.sum(jnp.sum(active) <= jnp.asarray(sizes[1:])))
        ft, gt = jax.lax.switch(level, [lambda xt, ids, k=k: evaluate(k, xt, ids) for k in sizes], lanes.xt, pid)
        lanes = step(lanes, ft, gt)
        done = active & (lanes.status != int(Status.RUNNING))
        slot = jnp.where(done, pid, capacity)  # out of range: dropped
        out_x = out_x.at[slot].set(lanes.x, mode="drop")
        out_f = out_f.at[slot].set(lanes.f, mode="drop")
        out_i = out_i.at[slot].set(jnp.stack([lanes.status, lanes.iters, lanes.evals], 1), mode="drop")
        # Finished lanes take the next queued problems in lane order.
        new_pid = next_pid + jnp.cumsum(done) - 1
        load = done & (new_pid < n_problems)
        lanes = _select(load, new_lanes(starts[jnp.clip(new_pid, 0, capacity - 1)]), lanes)
        pid = jnp.where(load, new_pid, pid)
        active = load | (active & ~done)
        next_pid = jnp.minimum(next_pid + jnp.sum(done), n_problems)
        return lanes, pid, active, next_pid, out_x, out_f, out_i

    first = jnp.arange(pool)
    state = (
        new_lanes(starts[jnp.minimum(first, capacity - 1)]),
        jnp.minimum(first, capacity - 1),
        first < n_problems,
        jnp.minimum(jnp.asarray(pool, jnp.int32), n_problems),
        jnp.zeros_like(starts),
        jnp.full((capacity,), jnp.nan, starts.dtype),
        jnp.zeros((capacity, 3), jnp.int32),
    )
    state = jax.lax.while_loop(lambda s: jnp.any(s[2]), body, state)
    return state[4], state[5], state[6]


_solve_jit = jax.jit(_solve, static_argnums=(0, 1))


def bucket(n: int, minimum: int = 16) -> int:
    """Round a size up to a power of two (at least `minimum`) so similar sizes share a compiled loop."""
    return max(minimum, 1 << max(n - 1, 0).bit_length())


def minimize_many(
    objective: Objective,
    starts: np.ndarray,
    features: np.ndarray,
    targets: np.ndarray,
    delta: float,
    variant: int = 0,
    weights: np.ndarray | None = None,
    weight_index: np.ndarray | None = None,
    options: LBFGSOptions | None = None,
) -> Solutions:
    """Minimise objective(..., variant) from every row of starts; problem i weighs the rows by weights[weight_index[i]].

    objective must be a stable (module-level) function so repeated calls reuse the compiled loop.
    Without weights every problem weighs all rows equally. Work is in float32.
    """
    opts = options or LBFGSOptions()
    n_problems, p = starts.shape
    n_rows = targets.shape[0]
    w = np.ones((1, n_rows)) if weights is None else np.asarray(weights, np.float64)
    idx = np.zeros(n_problems, np.int32) if weight_index is None else np.asarray(weight_index, np.int32)

    # Padding: extra data rows carry zero weight (and copy a real row so every term stays finite);
    # extra problems and weight rows are never loaded.
    rows, cap, wrows = bucket(n_rows, 64), bucket(n_problems, 8192), bucket(len(w), 1024)
    pad_rows = np.concatenate([np.arange(n_rows), np.zeros(rows - n_rows, int)])
    feats = np.asarray(features, np.float64)[:, pad_rows]
    targs = np.asarray(targets, np.float64)[pad_rows]
    w_pad = np.zeros((wrows, rows))
    w_pad[: len(w), :n_rows] = w
    starts_pad = np.zeros((cap, p))
    starts_pad[:n_problems] = starts
    idx_pad = np.zeros(cap, np.int32)
    idx_pad[:n_problems] = idx

    f32 = jnp.float32
    x, f, info = _solve_jit(
        objective,
        opts,
        jnp.asarray(starts_pad, f32),
        jnp.asarray(n_problems, jnp.int32),
        jnp.asarray(w_pad, f32),
        jnp.asarray(idx_pad),
        jnp.asarray(feats, f32),
        jnp.asarray(targs, f32),
        jnp.asarray(delta, f32),
        jnp.asarray(variant, jnp.int32),
    )
    info = np.asarray(info)[:n_problems]
    return Solutions(
        x=np.asarray(x, np.float64)[:n_problems],
        f=np.asarray(f, np.float64)[:n_problems],
        status=info[:, 0],
        iters=info[:, 1],
        evals=info[:, 2],
    )
