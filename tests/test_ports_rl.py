"""Reinforcement-learning programs from PyTorch, ported by changing only the imports.

Each program is written once against a library ``lib`` (``torch`` or ``nodegrad``) with
``nn = lib.nn``, ``F = lib.nn.functional``, ``D = lib.distributions``. Both runs start from
PyTorch's seeded initial weights, step the same NumPy environment and take the same actions
(drawn from NumPy through the policy's probabilities, or with the same noise), so log-probs,
losses, gradients and weights agree in float64.
"""

from __future__ import annotations

from collections import deque, namedtuple

import numpy as np
import pytest

import nodegrad as ng
from _ports import (arr, arrays, assert_same, both, float64_one_thread,  # noqa: F401
                    seeded)

torch = pytest.importorskip("torch")

TOL = 1e-10


pytestmark = pytest.mark.usefixtures("float64_one_thread")




class CartPole:
    """Classic cart-pole dynamics (Barto, Sutton & Anderson) in NumPy, seeded."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def reset(self) -> np.ndarray:
        self.s = self.rng.uniform(-0.05, 0.05, 4)
        return self.s.copy()

    def step(self, action: int):
        x, xd, th, thd = self.s
        force = 10.0 if action == 1 else -10.0
        ct, st = np.cos(th), np.sin(th)
        tmp = (force + 0.05 * thd ** 2 * st) / 1.1
        tha = (9.8 * st - ct * tmp) / (0.5 * (4.0 / 3.0 - 0.1 * ct ** 2 / 1.1))
        xa = tmp - 0.05 * tha * ct / 1.1
        self.s = np.array([x + 0.02 * xd, xd + 0.02 * xa, th + 0.02 * thd, thd + 0.02 * tha])
        done = abs(self.s[0]) > 2.4 or abs(self.s[2]) > 12 * 2 * np.pi / 360
        return self.s.copy(), 1.0, bool(done)


class Reacher:
    """A point mass pushed towards the origin with continuous 2-d actions (seeded)."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def reset(self) -> np.ndarray:
        self.p = self.rng.uniform(-1, 1, 2)
        self.v = np.zeros(2)
        return np.concatenate([self.p, self.v])

    def step(self, a: np.ndarray):
        self.v = 0.9 * self.v + 0.1 * np.clip(a, -1, 1)
        self.p = self.p + 0.1 * self.v
        reward = -float(self.p @ self.p) - 0.01 * float(a @ a)
        return np.concatenate([self.p, self.v]), reward, False


def choose(probs, u: float) -> int:
    """The category a uniform draw ``u`` picks from ``probs`` (inverse CDF, shared by both runs)."""
    return int(min(np.searchsorted(np.cumsum(arr(probs).ravel()), u), arr(probs).size - 1))


# 1. REINFORCE (the classic PyTorch example): Categorical policy, normalised discounted returns

def reinforce(lib, episodes: int = 4, baseline: bool = True, float32: bool = False):
    nn, F, optim = lib.nn, lib.nn.functional, lib.optim
    Categorical = lib.distributions.Categorical

    class Policy(nn.Module):
        def __init__(self):
            super().__init__()
            self.affine1 = nn.Linear(4, 16)
            self.affine2 = nn.Linear(16, 2)
            self.saved_log_probs = []
            self.rewards = []

        def forward(self, x):
            x = F.relu(self.affine1(x))
            action_scores = self.affine2(x)
            return F.softmax(action_scores, dim=1)

    policy = seeded(lib, Policy())
    optimizer = optim.Adam(policy.parameters(), lr=1e-2)
    eps = np.finfo(np.float32).eps.item()
    env, draws = CartPole(1), np.random.default_rng(2)
    record = {"logp": [], "loss": [], "grad": [], "shape": []}

    def select_action(state):
        state = lib.from_numpy(state)
        state = (state.float() if float32 else state.double()).unsqueeze(0)
        probs = policy(state)
        m = Categorical(probs)
        sampled = m.sample()
        record["shape"].append(list(sampled.shape) + [str(sampled.dtype).split(".")[-1]])
        action = lib.tensor([choose(probs, draws.random())])
        policy.saved_log_probs.append(m.log_prob(action))
        return action.item()

    def finish_episode():
        R = 0
        policy_loss = []
        returns = deque()
        for r in policy.rewards[::-1]:
            R = r + 0.99 * R
            returns.appendleft(R)
        returns = lib.tensor(returns)
        if baseline:
            # dim=0: bare ``x.std()`` is NumPy's population std in nodegrad (documented)
            returns = (returns - returns.mean()) / (returns.std(dim=0) + eps)
        for log_prob, R in zip(policy.saved_log_probs, returns):
            policy_loss.append(-log_prob * R)
        optimizer.zero_grad()
        policy_loss = lib.cat(policy_loss).sum()
        policy_loss.backward()
        record["grad"].append([p.grad.clone() for p in policy.parameters()])
        optimizer.step()
        record["loss"].append(policy_loss.item())
        record["logp"].append(lib.cat(policy.saved_log_probs).detach())
        del policy.rewards[:]
        del policy.saved_log_probs[:]

    for _ in range(episodes):
        state, ep_reward = env.reset(), 0
        for _t in range(1, 30):
            action = select_action(state)
            state, reward, done = env.step(action)
            policy.rewards.append(reward)
            ep_reward += reward
            if done:
                break
        finish_episode()
    record["w"] = arrays(policy.state_dict())
    return record


def test_reinforce_categorical_normalised_returns():
    got = both(reinforce)
    assert got["shape"][0] == [1, "int64"]


# 2. actor-critic with a shared body: smooth L1 value loss, entropy bonus

SavedAction = namedtuple("SavedAction", ["log_prob", "value", "entropy"])


def actor_critic(lib, episodes: int = 4, float32: bool = False):
    nn, F, optim = lib.nn, lib.nn.functional, lib.optim
    Categorical = lib.distributions.Categorical

    class Policy(nn.Module):
        def __init__(self):
            super().__init__()
            self.affine1 = nn.Linear(4, 16)
            self.action_head = nn.Linear(16, 2)
            self.value_head = nn.Linear(16, 1)
            self.saved_actions = []
            self.rewards = []

        def forward(self, x):
            x = F.relu(self.affine1(x))
            action_prob = F.softmax(self.action_head(x), dim=-1)
            state_values = self.value_head(x)
            return action_prob, state_values

    model = seeded(lib, Policy())
    optimizer = optim.Adam(model.parameters(), lr=3e-2)
    eps = np.finfo(np.float32).eps.item()
    env, draws = CartPole(3), np.random.default_rng(4)
    record = {"loss": [], "ent": [], "value": [], "grad": []}

    def select_action(state):
        state = lib.from_numpy(state).float() if float32 else lib.from_numpy(state).double()
        probs, state_value = model(state)
        m = Categorical(probs)
        action = lib.tensor(choose(probs, draws.random()))
        model.saved_actions.append(SavedAction(m.log_prob(action), state_value, m.entropy()))
        return action.item()

    def finish_episode():
        R = 0
        saved_actions = model.saved_actions
        policy_losses, value_losses, returns = [], [], []
        for r in model.rewards[::-1]:
            R = r + 0.99 * R
            returns.insert(0, R)
        returns = lib.tensor(returns)
        returns = (returns - returns.mean()) / (returns.std(dim=0) + eps)
        for (log_prob, value, entropy), R in zip(saved_actions, returns):
            advantage = R - value.item()
            policy_losses.append(-log_prob * advantage - 0.01 * entropy)
            value_losses.append(F.smooth_l1_loss(value, lib.tensor([R])))
        optimizer.zero_grad()
        loss = lib.stack(policy_losses).sum() + lib.stack(value_losses).sum()
        loss.backward()
        record["grad"].append({n: p.grad.clone() for n, p in model.named_parameters()})
        optimizer.step()
        record["loss"].append(loss.item())
        record["ent"].append(lib.stack([s.entropy for s in saved_actions]).detach())
        record["value"].append(lib.cat([s.value for s in saved_actions]).detach())
        del model.rewards[:]
        del model.saved_actions[:]

    for _ in range(episodes):
        state = env.reset()
        for _t in range(1, 25):
            action = select_action(state)
            state, reward, done = env.step(action)
            model.rewards.append(reward)
            if done:
                break
        finish_episode()
    record["w"] = arrays(model.state_dict())
    return record


def test_actor_critic_smooth_l1_entropy():
    both(actor_critic)


def test_tensor_of_zero_dim_tensors():
    """``lib.tensor([R])`` with R a 0-d tensor (the actor-critic value target) is a 1-d tensor."""
    for lib in (torch, ng):
        r = lib.tensor([1.5, 2.0])[0]
        t = lib.tensor([r])
        assert tuple(t.shape) == (1,) and t.dtype == lib.float64 and not t.requires_grad


def test_bare_std_is_pytorchs():
    """REINFORCE's ``(returns - returns.mean()) / returns.std()``: the method is PyTorch's
    (correction=1) bare, positional or with PyTorch's keywords; NumPy's ``ddof=``/``axis=``
    keywords and the function ``ng.std`` are NumPy's population std."""
    v = np.array([3.0, 2.0, 1.5, 1.0])
    x, t = ng.tensor(v), torch.tensor(v)
    for got in (x.std(), x.std(0), x.std(dim=0), x.std(unbiased=True), x.std(correction=1)):
        assert_same(got, t.std())
    assert_same(x.std(ddof=0), np.std(v))
    assert_same(x.std(axis=0), np.std(v))
    assert_same(ng.std(x), np.std(v))


# 3. PPO: clipped objective, minibatch epochs, clip_grad_norm_, Normal policy with a
#    state-independent log_std, KL early stopping

def ppo(lib, batches=None, updates: int = 2, target_kl: float = 0.003):
    """PPO (continuous actions). ``batches``: the minibatch indices to replay; None draws them
    with ``BatchSampler(SubsetRandomSampler(...))`` and records them."""
    nn, optim = lib.nn, lib.optim
    D = lib.distributions
    from_data = lib.utils.data
    n_steps, mb, epochs, clip = 24, 10, 4, 0.2

    class ActorCritic(nn.Module):
        def __init__(self, obs_dim: int, act_dim: int):
            super().__init__()
            self.actor_mean = nn.Sequential(nn.Linear(obs_dim, 16), nn.Tanh(),
                                            nn.Linear(16, act_dim))
            self.actor_logstd = nn.Parameter(lib.zeros(1, act_dim))
            self.critic = nn.Sequential(nn.Linear(obs_dim, 16), nn.Tanh(), nn.Linear(16, 1))

        def get_dist(self, x):
            mean = self.actor_mean(x)
            std = self.actor_logstd.expand_as(mean).exp()
            return D.Independent(D.Normal(mean, std), 1)

        def get_value(self, x):
            return self.critic(x).squeeze(-1)

    model = seeded(lib, ActorCritic(4, 2))
    optimizer = optim.Adam(model.parameters(), lr=3e-3, eps=1e-5)
    env, noise = Reacher(5), np.random.default_rng(6)
    record = {"logp": [], "loss": [], "kl": [], "norm": [], "ratio": [], "stop": [],
              "batches": [], "ent": []}
    replay = iter(batches) if batches is not None else None
    shuffle = lib.Generator().manual_seed(SHUFFLE_SEED)  # the minibatches, drawn by nodegrad
    state = env.reset()
    for _update in range(updates):
        obs, acts, logps, rews, vals = [], [], [], [], []
        for _ in range(n_steps):
            x = lib.tensor(state).unsqueeze(0)
            with lib.no_grad():
                dist = model.get_dist(x)
                mean, std = dist.base_dist.loc, dist.base_dist.scale
                action = mean + std * lib.tensor(noise.standard_normal((1, 2)))
                logps.append(dist.log_prob(action))
                vals.append(model.get_value(x))
            obs.append(x)
            acts.append(action)
            state, reward, _ = env.step(action.numpy()[0])
            rews.append(reward)
        obs, acts = lib.cat(obs), lib.cat(acts)
        old_logp, values = lib.cat(logps), lib.cat(vals)
        # generalised advantage estimation (gamma 0.99, lambda 0.95)
        with lib.no_grad():
            next_value = model.get_value(lib.tensor(state).unsqueeze(0))[0]
        advantages = lib.zeros(n_steps)
        last = 0.0
        for t in reversed(range(n_steps)):
            nv = next_value if t == n_steps - 1 else values[t + 1]
            delta = rews[t] + 0.99 * nv - values[t]
            last = delta + 0.99 * 0.95 * last
            advantages[t] = last
        returns = advantages + values
        old_dist = D.Independent(D.Normal(model.get_dist(obs).base_dist.loc.detach(),
                                          model.actor_logstd.detach().exp()), 1)
        record["logp"].append(old_logp)
        for _epoch in range(epochs):
            if replay is None:
                sampler = from_data.BatchSampler(
                    from_data.SubsetRandomSampler(range(n_steps), generator=shuffle), mb,
                    drop_last=False)
                idxs = [list(i) for i in sampler]
                record["batches"].append(idxs)
            else:
                idxs = next(replay)
            for idx in idxs:
                dist = model.get_dist(obs[idx])
                new_logp = dist.log_prob(acts[idx])
                ratio = (new_logp - old_logp[idx]).exp()
                adv = advantages[idx]
                adv = (adv - adv.mean()) / (adv.std(dim=0) + 1e-8)
                surr1 = ratio * adv
                surr2 = lib.clamp(ratio, 1.0 - clip, 1.0 + clip) * adv
                policy_loss = -lib.min(surr1, surr2).mean()
                value_loss = 0.5 * (returns[idx] - model.get_value(obs[idx])).pow(2).mean()
                entropy = dist.entropy().mean()
                loss = policy_loss + 0.5 * value_loss - 0.01 * entropy
                optimizer.zero_grad()
                loss.backward()
                norm = nn.utils.clip_grad_norm_(model.parameters(), 0.5)
                optimizer.step()
                record["loss"].append(loss.item())
                record["norm"].append(norm.item())
                record["ratio"].append(ratio.detach())
                record["ent"].append(entropy.item())
            with lib.no_grad():
                kl = D.kl_divergence(old_dist, model.get_dist(obs)).mean()
            record["kl"].append(kl.item())
            if kl > 1.5 * target_kl:
                record["stop"].append(_epoch)
                break
    record["w"] = arrays(model.state_dict())
    return record


SHUFFLE_SEED = 0


def test_ppo_clipped_minibatches_kl_early_stop():
    got = ppo(ng)
    for epoch in got["batches"]:  # each epoch a shuffled partition of the rollout
        assert [len(b) for b in epoch] == [10, 10, 4]
        assert sorted(i for b in epoch for i in b) == list(range(24))
    ref = ppo(torch, batches=got.pop("batches"))
    assert ref.pop("batches") == []
    assert_same(got, ref)
    assert got["stop"], "the KL early stop should trigger in this run"


# 4. DQN: replay memory, target network (hard sync and Polyak updates), Huber loss, gather,
#    max(1)[0] targets, epsilon-greedy argmax

Transition = namedtuple("Transition", ("state", "action", "next_state", "reward"))


def dqn(lib, steps: int = 40, batch_size: int = 8, soft: str = "state_dict",
        float32: bool = False):
    nn, F, optim = lib.nn, lib.nn.functional, lib.optim
    gamma, tau, n_actions = 0.99, 0.05, 2

    class DQN(nn.Module):
        def __init__(self, n_observations: int, n_actions: int):
            super().__init__()
            self.layer1 = nn.Linear(n_observations, 16)
            self.layer2 = nn.Linear(16, 16)
            self.layer3 = nn.Linear(16, n_actions)

        def forward(self, x):
            x = F.relu(self.layer1(x))
            x = F.relu(self.layer2(x))
            return self.layer3(x)

    policy_net = seeded(lib, DQN(4, n_actions))
    target_net = DQN(4, n_actions)
    target_net.load_state_dict(policy_net.state_dict())
    optimizer = optim.AdamW(policy_net.parameters(), lr=1e-3, amsgrad=True)
    memory = deque([], maxlen=100)
    env, draws = CartPole(7), np.random.default_rng(8)
    record = {"loss": [], "q": [], "actions": [], "greedy": []}

    def select_action(state, step):
        eps_threshold = 0.05 + (0.9 - 0.05) * np.exp(-1.0 * step / 20)
        if draws.random() > eps_threshold:
            with lib.no_grad():
                q = policy_net(state)
                record["greedy"].append(q.argmax(dim=1).item())
                return q.max(1).indices.view(1, 1)
        return lib.tensor([[int(draws.integers(n_actions))]], dtype=lib.long)

    def optimize_model():
        if len(memory) < batch_size:
            return
        picks = draws.choice(len(memory), batch_size, replace=False)
        transitions = [memory[i] for i in picks]
        batch = Transition(*zip(*transitions))
        non_final_mask = lib.tensor(tuple(map(lambda s: s is not None, batch.next_state)),
                                    dtype=lib.bool)
        non_final_next_states = lib.cat([s for s in batch.next_state if s is not None])
        state_batch = lib.cat(batch.state)
        action_batch = lib.cat(batch.action)
        reward_batch = lib.cat(batch.reward)
        state_action_values = policy_net(state_batch).gather(1, action_batch)
        next_state_values = lib.zeros(batch_size)
        with lib.no_grad():
            next_state_values[non_final_mask] = target_net(non_final_next_states).max(1)[0]
        expected_state_action_values = (next_state_values * gamma) + reward_batch
        criterion = nn.SmoothL1Loss()
        loss = criterion(state_action_values, expected_state_action_values.unsqueeze(1))
        huber = F.huber_loss(state_action_values, expected_state_action_values.unsqueeze(1),
                             delta=0.5)
        optimizer.zero_grad()
        (loss + huber).backward()
        nn.utils.clip_grad_value_(policy_net.parameters(), 100)
        optimizer.step()
        record["loss"].append([loss.item(), huber.item()])
        record["q"].append(state_action_values.detach())

    dtype = lib.float32 if float32 else lib.float64
    state = lib.tensor(env.reset(), dtype=dtype).unsqueeze(0)
    for step in range(steps):
        action = select_action(state, step)
        record["actions"].append(action.item())
        observation, reward, terminated = env.step(action.item())
        reward = lib.tensor([reward])
        next_state = None if terminated else lib.tensor(observation, dtype=dtype).unsqueeze(0)
        memory.append(Transition(state, action, next_state, reward))
        state = (lib.tensor(env.reset(), dtype=dtype).unsqueeze(0) if terminated
                 else next_state)
        optimize_model()
        if soft == "state_dict":  # the PyTorch tutorial's soft update
            target_net_state_dict = target_net.state_dict()
            policy_net_state_dict = policy_net.state_dict()
            for key in policy_net_state_dict:
                target_net_state_dict[key] = (policy_net_state_dict[key] * tau
                                              + target_net_state_dict[key] * (1 - tau))
            target_net.load_state_dict(target_net_state_dict)
        elif soft == "polyak":  # in place under no_grad (SAC / TD3 style)
            with lib.no_grad():
                for p, p_targ in zip(policy_net.parameters(), target_net.parameters()):
                    p_targ.mul_(1 - tau)
                    p_targ.add_(tau * p)
        elif step % 10 == 9:  # hard sync
            target_net.load_state_dict(policy_net.state_dict())
    record["w"] = arrays(policy_net.state_dict())
    record["target"] = arrays(target_net.state_dict())
    return record


@pytest.mark.parametrize("soft", ["state_dict", "polyak", "hard"])
def test_dqn_target_network_huber_gather(soft):
    got = both(dqn, soft=soft)
    assert len(got["loss"]) == 40 - 7 and got["greedy"]


# 5. distributions: a mixture density network, a tanh-squashed Gaussian (SAC), Bernoulli, Beta,
#    Dirichlet (log_prob, entropy, moments, gradients through rsample)

def mdn(lib, steps: int = 5):
    """A mixture density network (Bishop) fitted by the negative log-likelihood of a
    ``MixtureSameFamily`` of diagonal Gaussians."""
    nn, optim = lib.nn, lib.optim
    D = lib.distributions
    rng = np.random.default_rng(9)
    x = rng.uniform(-1, 1, (32, 1))
    y = np.concatenate([np.sin(3 * x), np.cos(3 * x)], 1) + 0.1 * rng.standard_normal((32, 2))
    x, y = lib.tensor(x), lib.tensor(y)
    k, d = 3, 2

    class MDN(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(1, 16), nn.Tanh())
            self.pi = nn.Linear(16, k)
            self.mu = nn.Linear(16, k * d)
            self.log_sigma = nn.Linear(16, k * d)

        def forward(self, x):
            h = self.body(x)
            mix = D.Categorical(logits=self.pi(h))
            mu = self.mu(h).view(-1, k, d)
            sigma = nn.functional.softplus(self.log_sigma(h)).view(-1, k, d) + 1e-3
            comp = D.Independent(D.Normal(mu, sigma), 1)
            return D.MixtureSameFamily(mix, comp)

    model = seeded(lib, MDN())
    opt = optim.RMSprop(model.parameters(), lr=1e-2)
    record = {"nll": [], "grad": [], "mean": [], "var": [], "shape": []}
    for _ in range(steps):
        dist = model(x)
        loss = -dist.log_prob(y).mean()
        opt.zero_grad()
        loss.backward()
        record["grad"].append({n: p.grad.clone() for n, p in model.named_parameters()})
        opt.step()
        record["nll"].append(loss.item())
        record["mean"].append(dist.mean.detach())
        record["var"].append(dist.variance.detach())
    record["cdf_mix"] = D.MixtureSameFamily(
        D.Categorical(probs=lib.tensor([0.3, 0.7])),
        D.Normal(lib.tensor([-1.0, 2.0]), lib.tensor([0.5, 1.5]))).cdf(lib.tensor([0.0, 1.0]))
    s = dist.sample((4,))
    record["shape"] = [list(s.shape), list(dist.batch_shape), list(dist.event_shape)]
    record["w"] = arrays(model.state_dict())
    return record


def test_mixture_density_network():
    got = both(mdn)
    assert got["shape"] == [[4, 32, 2], [32], [2]]


def with_normal_noise(monkeypatch, eps: np.ndarray):
    """Both libraries' ``Normal.rsample`` draw ``eps`` (the same reparameterisation noise)."""
    import torch.distributions.normal as tn

    import nodegrad.distributions._ng as nd
    monkeypatch.setattr(tn, "_standard_normal",
                        lambda shape, dtype, device: torch.tensor(eps).reshape(shape).to(dtype))
    monkeypatch.setattr(nd, "randn", lambda shape, dtype=None, device=None, generator=None:
                        ng.tensor(eps).reshape(shape).astype(dtype))


def sac_actor(lib, steps: int = 4, form: str = "transformed"):
    """A SAC actor: tanh-squashed Gaussian (rsample), log-prob with the tanh Jacobian, the
    entropy temperature learned through ``log_alpha``."""
    nn, F, optim = lib.nn, lib.nn.functional, lib.optim
    D = lib.distributions
    obs = lib.tensor(np.random.default_rng(10).standard_normal((6, 3)))

    class Actor(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(3, 16), nn.ReLU())
            self.mu = nn.Linear(16, 2)
            self.log_std = nn.Linear(16, 2)

        def forward(self, s):
            h = self.net(s)
            log_std = lib.clamp(self.log_std(h), -5, 2)
            return self.mu(h), log_std.exp()

    class Critic(nn.Module):
        def __init__(self):
            super().__init__()
            self.q = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 1))

        def forward(self, s, a):
            return self.q(lib.cat([s, a], dim=-1))

    actor, critic = seeded(lib, Actor()), seeded(lib, Critic(), 1)
    log_alpha = lib.zeros(1, requires_grad=True)
    pi_opt = optim.Adam(actor.parameters(), lr=1e-2)
    alpha_opt = optim.Adam([log_alpha], lr=1e-2)
    record = {"logp": [], "act": [], "loss": [], "alpha": [], "grad": []}
    for _ in range(steps):
        mu, std = actor(obs)
        if form == "transformed":
            dist = D.TransformedDistribution(D.Normal(mu, std), [D.TanhTransform(cache_size=1)])
            action = dist.rsample()
            log_prob = dist.log_prob(action).sum(-1, keepdim=True)
        else:  # the spinning-up form: Normal log-prob minus the tanh correction
            normal = D.Normal(mu, std)
            x_t = normal.rsample()
            action = lib.tanh(x_t)
            log_prob = normal.log_prob(x_t).sum(-1, keepdim=True)
            log_prob -= (2 * (np.log(2) - x_t - F.softplus(-2 * x_t))).sum(-1, keepdim=True)
        alpha = log_alpha.exp().detach()
        loss = (alpha * log_prob - critic(obs, action)).mean()
        pi_opt.zero_grad()
        loss.backward()
        record["grad"].append([p.grad.clone() for p in actor.parameters()])
        pi_opt.step()
        alpha_loss = -(log_alpha * (log_prob + -2.0).detach()).mean()
        alpha_opt.zero_grad()
        alpha_loss.backward()
        alpha_opt.step()
        record["logp"].append(log_prob.detach())
        record["act"].append(action.detach())
        record["loss"].append([loss.item(), alpha_loss.item()])
        record["alpha"].append(log_alpha.item())
    record["w"] = arrays(actor.state_dict())
    return record


@pytest.mark.parametrize("form", ["transformed", "explicit"])
def test_sac_squashed_gaussian(monkeypatch, form):
    with_normal_noise(monkeypatch, np.random.default_rng(11).standard_normal((6, 2)))
    ref = sac_actor(torch, form=form)
    got = sac_actor(ng, form=form)
    assert_same(got, ref, 1e-9)
    if form == "explicit":  # the two forms are the same density
        assert_same(sac_actor(ng, form="transformed")["logp"], got["logp"], 1e-9)


def dist_cases(lib):
    """name -> (parameter arrays, build(*params), values): distributions RL code uses."""
    D = lib.distributions
    rng = np.random.default_rng(12)
    logits = rng.standard_normal((3, 4))
    return {
        "bernoulli_logits": ([rng.standard_normal(5)], lambda p: D.Bernoulli(logits=p),
                             np.array([0.0, 1.0, 1.0, 0.0, 1.0])),
        "bernoulli_probs": ([rng.uniform(0.05, 0.95, 5)], lambda p: D.Bernoulli(probs=p),
                            np.array([0.0, 1.0, 1.0, 0.0, 1.0])),
        "categorical_logits": ([logits], lambda p: D.Categorical(logits=p), np.array([0, 3, 1])),
        "categorical_probs": ([np.abs(logits) + 0.1], lambda p: D.Categorical(probs=p),
                              np.array([[2, 0, 1], [3, 3, 3]])),
        "onehot": ([logits], lambda p: D.OneHotCategorical(logits=p), np.eye(4)[[1, 0, 2]]),
        "beta": ([rng.uniform(0.5, 3, 4), rng.uniform(0.5, 3, 4)],
                 lambda a, b: D.Beta(a, b), rng.uniform(0.05, 0.95, 4)),
        "beta_policy": ([rng.standard_normal((2, 3)), rng.standard_normal((2, 3))],
                        lambda a, b: D.Independent(D.Beta(1 + lib.nn.functional.softplus(a),
                                                          1 + lib.nn.functional.softplus(b)), 1),
                        rng.uniform(0.05, 0.95, (2, 3))),
        "dirichlet": ([rng.uniform(0.5, 4, (2, 3))], lambda a: D.Dirichlet(a),
                      rng.dirichlet([1.0, 2.0, 3.0], 2)),
        "normal_indep": ([rng.standard_normal((3, 2)), rng.standard_normal(2)],
                         lambda m, s: D.Independent(D.Normal(m, s.exp()), 1),
                         rng.standard_normal((3, 2))),
        "mvn_diag": ([rng.standard_normal((3, 2)), rng.standard_normal(2)],
                     lambda m, s: D.MultivariateNormal(m, scale_tril=lib.diag(s.exp())),
                     rng.standard_normal((3, 2))),
        "tanh_normal": ([rng.standard_normal(3), rng.standard_normal(3)],
                        lambda m, s: D.TransformedDistribution(
                            D.Normal(m, s.exp()),
                            [D.TanhTransform(), D.AffineTransform(0.5, 2.0)]),
                        0.5 + 2 * np.tanh(rng.standard_normal(3))),
    }


STATS = ("log_prob", "entropy", "mean", "variance", "stddev", "mode")


def dist_record(lib, name: str):
    params, build, value = dist_cases(lib)[name]
    ps = [lib.tensor(p, requires_grad=True) for p in params]
    dist = build(*ps)
    value = lib.tensor(value)
    record = {"shape": [list(dist.batch_shape), list(dist.event_shape)]}
    for stat in STATS:
        try:
            out = dist.log_prob(value) if stat == "log_prob" else (
                dist.entropy() if stat == "entropy" else getattr(dist, stat))
        except NotImplementedError:
            record[stat] = "NotImplementedError"
            continue
        grads = [None] * len(ps) if not out.requires_grad else \
            lib.autograd.grad(out.sum(), ps, retain_graph=True, allow_unused=True)
        record[stat] = [out.detach(), [g if g is not None else np.zeros(1) for g in grads]]
    return record


@pytest.mark.parametrize("name", list(dist_cases(torch)))
def test_distribution_values_and_gradients(name):
    both(dist_record, name, tol=1e-9)


def test_gamma_rsample_gradient_is_pytorchs_implicit_gradient():
    """Pointwise: the gradient of a Gamma sample in (concentration, rate) is PyTorch's
    implicit one, ``_standard_gamma_grad(alpha, x * rate) / rate`` and ``-x / rate``."""
    rng = np.random.default_rng(13)
    a, r, w = rng.uniform(0.3, 4, 6), rng.uniform(0.5, 2, 6), rng.standard_normal(6)
    alpha, rate = ng.tensor(a, requires_grad=True), ng.tensor(r, requires_grad=True)
    ng.manual_seed(0)
    x = ng.distributions.Gamma(alpha, rate).rsample()
    (x * ng.tensor(w)).sum().backward()
    xs = torch.tensor(x.detach().numpy())
    ta, tr = torch.tensor(a), torch.tensor(r)
    assert_same(alpha.grad, torch._standard_gamma_grad(ta, xs * tr) / tr * torch.tensor(w))
    assert_same(rate.grad, -xs / tr * torch.tensor(w))


@pytest.mark.parametrize("kind", ["beta", "dirichlet"])
def test_rsample_gradient_matches_moment_gradients(kind):
    """Through ``rsample`` the Monte-Carlo gradients of E[x] and E[x^2] approach PyTorch's
    exact gradients of ``mean`` and ``variance + mean**2`` (the pathwise estimator is unbiased;
    its per-sample value depends on the Gamma draws, not on x alone)."""
    rng = np.random.default_rng(14)
    n = 40000
    if kind == "beta":
        p = [rng.uniform(0.8, 3, 2), rng.uniform(0.8, 3, 2)]
        build = {torch: lambda a, b: torch.distributions.Beta(a, b),
                 ng: lambda a, b: ng.distributions.Beta(a, b)}
    else:
        p = [rng.uniform(0.8, 3, 3)]
        build = {torch: lambda a: torch.distributions.Dirichlet(a),
                 ng: lambda a: ng.distributions.Dirichlet(a)}
    w1, w2 = rng.standard_normal(p[0].shape), rng.standard_normal(p[0].shape)

    def exact(lib, ps):
        d = build[lib](*ps)
        return (d.mean * lib.tensor(w1)).sum() + ((d.variance + d.mean ** 2) * lib.tensor(w2)).sum()

    tp = [torch.tensor(v, requires_grad=True) for v in p]
    ref = torch.autograd.grad(exact(torch, tp), tp)
    ng.manual_seed(1)
    nps = [ng.tensor(v, requires_grad=True) for v in p]
    x = build[ng](*nps).rsample((n,))
    mc = ((x * ng.tensor(w1)).sum(-1) + (x ** 2 * ng.tensor(w2)).sum(-1)).mean()
    got = ng.autograd.grad(mc, nps)
    for g, r in zip(got, ref):
        np.testing.assert_allclose(arr(g), arr(r), atol=0.01 + 0.02 * np.abs(arr(r)).max())
    assert_same(exact(ng, nps), exact(torch, tp))


# 6. PPO as in CleanRL (discrete actions, vectorised environments): orthogonal layer init, GAE
#    with dones, NumPy-shuffled minibatch indices, clipped value loss, approx-KL, clip fractions,
#    learning-rate annealing through param_groups

SQRT2 = float(np.sqrt(2))


def ppo_cleanrl(lib, iterations: int = 2):
    nn, optim = lib.nn, lib.optim
    Categorical = lib.distributions.Categorical
    num_envs, num_steps, minibatches, update_epochs = 2, 16, 4, 3
    batch_size = num_envs * num_steps
    minibatch_size = batch_size // minibatches
    lr, gamma, gae_lambda, clip_coef, ent_coef, vf_coef = 2.5e-3, 0.99, 0.95, 0.2, 0.01, 0.5

    def layer_init(layer, std=SQRT2, bias_const=0.0):
        nn.init.orthogonal_(layer.weight, std)
        nn.init.constant_(layer.bias, bias_const)
        return layer

    class Agent(nn.Module):
        def __init__(self):
            super().__init__()
            self.critic = nn.Sequential(layer_init(nn.Linear(4, 16)), nn.Tanh(),
                                        layer_init(nn.Linear(16, 1), std=1.0))
            self.actor = nn.Sequential(layer_init(nn.Linear(4, 16)), nn.Tanh(),
                                       layer_init(nn.Linear(16, 2), std=0.01))

        def get_value(self, x):
            return self.critic(x)

        def get_action_and_value(self, x, action=None, u=None):
            logits = self.actor(x)
            probs = Categorical(logits=logits)
            if action is None:  # the same draws in both libraries: inverse CDF of probs
                action = lib.tensor([choose(p, ui) for p, ui in zip(probs.probs, u)])
            return action, probs.log_prob(action), probs.entropy(), self.critic(x)

    agent = seeded(lib, Agent())
    optimizer = optim.Adam(agent.parameters(), lr=lr, eps=1e-5)
    envs = [CartPole(20 + i) for i in range(num_envs)]
    draws = np.random.default_rng(21)
    obs = lib.zeros((num_steps, num_envs) + (4,))
    actions = lib.zeros((num_steps, num_envs))
    logprobs = lib.zeros((num_steps, num_envs))
    rewards = lib.zeros((num_steps, num_envs))
    dones = lib.zeros((num_steps, num_envs))
    values = lib.zeros((num_steps, num_envs))
    next_obs = lib.Tensor(np.stack([e.reset() for e in envs]))
    next_done = lib.zeros(num_envs)
    record = {"lr": [], "pg": [], "v": [], "ent": [], "kl": [], "old_kl": [], "clipfrac": [],
              "ev": []}
    for iteration in range(1, iterations + 1):
        frac = 1.0 - (iteration - 1.0) / iterations
        optimizer.param_groups[0]["lr"] = frac * lr
        for step in range(num_steps):
            obs[step] = next_obs
            dones[step] = next_done
            with lib.no_grad():
                action, logprob, _, value = agent.get_action_and_value(
                    next_obs, u=draws.random(num_envs))
                values[step] = value.flatten()
            actions[step] = action
            logprobs[step] = logprob
            stepped = [e.step(int(a)) for e, a in zip(envs, action.numpy())]
            nxt = np.stack([e.reset() if d else o for e, (o, _, d) in zip(envs, stepped)])
            reward = np.array([r for _, r, _ in stepped])
            terminations = np.array([d for _, _, d in stepped])
            rewards[step] = lib.tensor(reward).view(-1)
            next_obs, next_done = lib.Tensor(nxt), lib.Tensor(terminations.astype(float))
        with lib.no_grad():
            next_value = agent.get_value(next_obs).reshape(1, -1)
            advantages = lib.zeros_like(rewards)
            lastgaelam = 0
            for t in reversed(range(num_steps)):
                if t == num_steps - 1:
                    nextnonterminal = 1.0 - next_done
                    nextvalues = next_value
                else:
                    nextnonterminal = 1.0 - dones[t + 1]
                    nextvalues = values[t + 1]
                delta = rewards[t] + gamma * nextvalues * nextnonterminal - values[t]
                advantages[t] = lastgaelam = (delta + gamma * gae_lambda * nextnonterminal
                                              * lastgaelam)
            returns = advantages + values
        b_obs = obs.reshape((-1,) + (4,))
        b_logprobs = logprobs.reshape(-1)
        b_actions = actions.reshape((-1,))
        b_advantages = advantages.reshape(-1)
        b_returns = returns.reshape(-1)
        b_values = values.reshape(-1)
        b_inds = np.arange(batch_size)
        clipfracs = []
        for _epoch in range(update_epochs):
            draws.shuffle(b_inds)
            for start in range(0, batch_size, minibatch_size):
                end = start + minibatch_size
                mb_inds = b_inds[start:end]
                _, newlogprob, entropy, newvalue = agent.get_action_and_value(
                    b_obs[mb_inds], b_actions.long()[mb_inds])
                logratio = newlogprob - b_logprobs[mb_inds]
                ratio = logratio.exp()
                with lib.no_grad():
                    old_approx_kl = (-logratio).mean()
                    approx_kl = ((ratio - 1) - logratio).mean()
                    clipfracs += [((ratio - 1.0).abs() > clip_coef).float().mean().item()]
                mb_advantages = b_advantages[mb_inds]
                mb_advantages = (mb_advantages - mb_advantages.mean()) / (
                    mb_advantages.std(dim=0) + 1e-8)
                pg_loss1 = -mb_advantages * ratio
                pg_loss2 = -mb_advantages * lib.clamp(ratio, 1 - clip_coef, 1 + clip_coef)
                pg_loss = lib.max(pg_loss1, pg_loss2).mean()
                newvalue = newvalue.view(-1)
                v_loss_unclipped = (newvalue - b_returns[mb_inds]) ** 2
                v_clipped = b_values[mb_inds] + lib.clamp(newvalue - b_values[mb_inds],
                                                          -clip_coef, clip_coef)
                v_loss_clipped = (v_clipped - b_returns[mb_inds]) ** 2
                v_loss_max = lib.max(v_loss_unclipped, v_loss_clipped)
                v_loss = 0.5 * v_loss_max.mean()
                entropy_loss = entropy.mean()
                loss = pg_loss - ent_coef * entropy_loss + v_loss * vf_coef
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), 0.5)
                optimizer.step()
        y_pred, y_true = b_values.cpu().numpy(), b_returns.cpu().numpy()
        var_y = np.var(y_true)
        record["ev"].append(np.nan if var_y == 0 else 1 - np.var(y_true - y_pred) / var_y)
        record["lr"].append(optimizer.param_groups[0]["lr"])
        record["pg"].append(pg_loss.item())
        record["v"].append(v_loss.item())
        record["ent"].append(entropy_loss.item())
        record["kl"].append(approx_kl.item())
        record["old_kl"].append(old_approx_kl.item())
        record["clipfrac"].append(np.mean(clipfracs))
    record["w"] = arrays(agent.state_dict())
    return record


def test_ppo_cleanrl_discrete():
    got = both(ppo_cleanrl)
    assert max(got["clipfrac"]) > 0  # the clipping is exercised


def test_legacy_typed_constructors():
    """``FloatTensor``/``LongTensor``/... as PyTorch's: data (converted to the type), integer
    sizes, nothing; isinstance and ``x.type(...)``; clear errors elsewhere."""
    for lib in (torch, ng):
        f = lib.FloatTensor(np.arange(3.0))
        assert f.dtype == lib.float32 and f.tolist() == [0.0, 1.0, 2.0]
        assert lib.LongTensor(np.array([1.7, -2.2])).tolist() == [1, -2]
        assert lib.LongTensor([True, False]).dtype == lib.int64
        assert lib.BoolTensor([1, 0]).tolist() == [True, False]
        assert lib.DoubleTensor((2, 3)).tolist() == [2.0, 3.0]
        assert tuple(lib.FloatTensor(2, 3).shape) == (2, 3)
        assert tuple(lib.FloatTensor(np.int64(4)).shape) == (4,)
        assert tuple(lib.FloatTensor().shape) == (0,) == tuple(lib.IntTensor([]).shape)
        assert tuple(lib.FloatTensor(size=(2,)).shape) == (2,)
        assert isinstance(f, lib.FloatTensor) and not isinstance(f, lib.DoubleTensor)
        assert f.type(lib.DoubleTensor).dtype == lib.float64
        assert f.type() == f"{lib.__name__}.FloatTensor"
        for bad in [(2.5,), ("ab",), (f, 3), (lib.ones(2, dtype=lib.float64),)]:
            with pytest.raises(TypeError):
                lib.FloatTensor(*bad)
        with pytest.raises(ValueError):
            lib.FloatTensor([[1, 2], [3]])
    assert repr(ng.LongTensor) == "<class 'nodegrad.LongTensor'>"
    with pytest.raises(ValueError, match="FloatTensor: negative"):
        ng.FloatTensor(2, -1)


@pytest.fixture
def float32_default():
    """PyTorch's and nodegrad's usual default, float32, for one test."""
    torch.set_default_dtype(torch.float32)
    ng.set_default_dtype(ng.float32)
    yield
    torch.set_default_dtype(torch.float64)
    ng.set_default_dtype(ng.float64)


@pytest.mark.parametrize("program", [reinforce, actor_critic, dqn])
def test_float32_programs(float32_default, program):
    both(program, float32=True, tol=2e-4)


# 7. TRPO (pytorch-trpo style): Fisher-vector products by double backward through the KL of the
#    policy, conjugate gradient, parameters_to_vector / vector_to_parameters line search

def trpo(lib, iterations: int = 2, continuous: bool = True):
    nn = lib.nn
    D = lib.distributions
    p2v, v2p = nn.utils.parameters_to_vector, nn.utils.vector_to_parameters
    max_kl, damping = 1e-2, 1e-1

    class Policy(nn.Module):
        def __init__(self):
            super().__init__()
            self.affine1 = nn.Linear(4, 16)
            self.head = nn.Linear(16, 2)
            self.action_log_std = nn.Parameter(lib.zeros(1, 2) - 0.5)

        def forward(self, x):
            h = lib.tanh(self.affine1(x))
            out = self.head(h)
            if continuous:
                return D.Normal(out, self.action_log_std.exp().expand_as(out))
            return D.Categorical(logits=out)

    policy = seeded(lib, Policy())
    if not continuous:
        policy.action_log_std.requires_grad_(False)
    params = [p for p in policy.parameters() if p.requires_grad]
    rng = np.random.default_rng(30)
    record = {"loss": [], "kl": [], "step": [], "fvp": [], "grad": []}

    def conjugate_gradients(Avp, b, nsteps, residual_tol=1e-10):
        x = lib.zeros(b.size())
        r = b.clone()
        p = b.clone()
        rdotr = lib.dot(r, r)
        for _ in range(nsteps):
            _Avp = Avp(p)
            alpha = rdotr / lib.dot(p, _Avp)
            x += alpha * p
            r -= alpha * _Avp
            new_rdotr = lib.dot(r, r)
            betta = new_rdotr / rdotr
            p = r + betta * p
            rdotr = new_rdotr
            if rdotr < residual_tol:
                break
        return x

    for _ in range(iterations):
        states = lib.tensor(rng.standard_normal((12, 4)))
        advantages = lib.tensor(rng.standard_normal(12))
        with lib.no_grad():
            fixed = policy(states)
            if continuous:
                actions = fixed.mean + fixed.stddev * lib.tensor(rng.standard_normal((12, 2)))
                fixed_log_prob = fixed.log_prob(actions).sum(1)
            else:
                actions = lib.tensor([choose(p, u) for p, u in zip(fixed.probs, rng.random(12))])
                fixed_log_prob = fixed.log_prob(actions)

        def get_loss(volatile=False):
            with lib.set_grad_enabled(not volatile):
                dist = policy(states)
                lp = dist.log_prob(actions)
                lp = lp.sum(1) if continuous else lp
                return (-advantages * lib.exp(lp - fixed_log_prob)).mean()

        def get_kl():
            dist = policy(states)
            old = D.Normal(dist.mean.detach(), dist.stddev.detach()) if continuous else \
                D.Categorical(logits=dist.logits.detach())
            kl = D.kl_divergence(old, dist)
            return kl.sum(1, keepdim=True) if continuous else kl

        loss = get_loss()
        grads = lib.autograd.grad(loss, params)
        loss_grad = lib.cat([g.view(-1) for g in grads])

        def Fvp(v):
            kl = get_kl().mean()
            grads = lib.autograd.grad(kl, params, create_graph=True)
            flat_grad_kl = lib.cat([g.view(-1) for g in grads])
            kl_v = (flat_grad_kl * v).sum()
            grads = lib.autograd.grad(kl_v, params)
            flat_grad_grad_kl = lib.cat([g.contiguous().view(-1) for g in grads]).data
            return flat_grad_grad_kl + v * damping

        record["fvp"].append(Fvp(loss_grad))
        stepdir = conjugate_gradients(Fvp, -loss_grad, 10)
        shs = 0.5 * (stepdir * Fvp(stepdir)).sum(0, keepdim=True)
        lm = lib.sqrt(shs / max_kl)
        fullstep = stepdir / lm[0]
        neggdotstepdir = (-loss_grad * stepdir).sum(0, keepdim=True)
        prev = p2v(params)
        fval = get_loss(True).data
        expected_improve_rate = neggdotstepdir / lm[0]
        accepted = -1
        for n_back, stepfrac in enumerate(0.5 ** np.arange(10)):
            xnew = prev + stepfrac * fullstep
            v2p(xnew, params)
            newfval = get_loss(True).data
            actual_improve = fval - newfval
            ratio = actual_improve / (expected_improve_rate * stepfrac)
            if ratio.item() > 0.1 and actual_improve > 0:
                accepted = n_back
                break
        else:
            v2p(prev, params)
        record["loss"].append(float(loss))
        record["step"].append(accepted)
        record["grad"].append(loss_grad)
        with lib.no_grad():
            record["kl"].append(get_kl().mean().item())
    record["w"] = arrays(policy.state_dict())
    return record


@pytest.mark.parametrize("continuous", [True, False])
def test_trpo_fisher_vector_conjugate_gradient(continuous):
    got = both(trpo, continuous=continuous, tol=1e-9)
    assert got["step"][0] >= 0


# 8. Rainbow pieces: noisy dueling C51 network, categorical projection with index_add_,
#    prioritised-replay weights, QR-DQN's quantile Huber loss

def rainbow(lib, steps: int = 4):
    nn, F, optim = lib.nn, lib.nn.functional, lib.optim
    atoms, v_min, v_max, n_actions, batch = 11, -5.0, 5.0, 3, 6
    noise = np.random.default_rng(40)

    class NoisyLinear(nn.Module):
        def __init__(self, in_features, out_features, std_init=0.5):
            super().__init__()
            self.in_features, self.out_features, self.std_init = in_features, out_features, std_init
            self.weight_mu = nn.Parameter(lib.empty(out_features, in_features))
            self.weight_sigma = nn.Parameter(lib.empty(out_features, in_features))
            self.register_buffer("weight_epsilon", lib.empty(out_features, in_features))
            self.bias_mu = nn.Parameter(lib.empty(out_features))
            self.bias_sigma = nn.Parameter(lib.empty(out_features))
            self.register_buffer("bias_epsilon", lib.empty(out_features))
            self.reset_parameters()
            self.reset_noise()

        def reset_parameters(self):
            mu_range = 1 / np.sqrt(self.in_features)
            self.weight_mu.data.uniform_(-mu_range, mu_range)
            nn.init.constant_(self.weight_sigma, self.std_init / np.sqrt(self.in_features))
            nn.init.uniform_(self.bias_mu, -mu_range, mu_range)
            nn.init.constant_(self.bias_sigma, self.std_init / np.sqrt(self.out_features))

        def _scale_noise(self, size):
            x = lib.tensor(noise.standard_normal(size))
            return x.sign().mul_(x.abs().sqrt_())

        def reset_noise(self):
            epsilon_in = self._scale_noise(self.in_features)
            epsilon_out = self._scale_noise(self.out_features)
            self.weight_epsilon.copy_(epsilon_out.ger(epsilon_in))
            self.bias_epsilon.copy_(epsilon_out)

        def forward(self, x):
            if self.training:
                return F.linear(x, self.weight_mu + self.weight_sigma * self.weight_epsilon,
                                self.bias_mu + self.bias_sigma * self.bias_epsilon)
            return F.linear(x, self.weight_mu, self.bias_mu)

    class DuelingC51(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 16)
            self.fc_v = NoisyLinear(16, atoms)
            self.fc_a = NoisyLinear(16, n_actions * atoms)
            self.register_buffer("support", lib.linspace(v_min, v_max, atoms))

        def forward(self, x, log=False):
            h = F.relu(self.fc(x))
            v = self.fc_v(h).view(-1, 1, atoms)
            a = self.fc_a(h).view(-1, n_actions, atoms)
            q = v + a - a.mean(1, keepdim=True)
            return F.log_softmax(q, dim=2) if log else F.softmax(q, dim=2)

        def reset_noise(self):
            for name, module in self.named_children():
                if "fc_" in name:
                    module.reset_noise()

    online = seeded(lib, DuelingC51())
    target = seeded(lib, DuelingC51())
    target.load_state_dict(online.state_dict())
    target.train()
    for param in target.parameters():
        param.requires_grad = False
    optimiser = optim.Adam(online.parameters(), lr=1e-3, eps=1.5e-4)
    rng = np.random.default_rng(41)
    delta_z = (v_max - v_min) / (atoms - 1)
    record = {"loss": [], "prio": [], "q": [], "qr": []}
    for _ in range(steps):
        states = lib.tensor(rng.standard_normal((batch, 4)))
        next_states = lib.tensor(rng.standard_normal((batch, 4)))
        actions = lib.tensor(rng.integers(0, n_actions, batch))
        returns = lib.tensor(rng.standard_normal(batch) * 3)
        nonterminals = lib.tensor((rng.random((batch, 1)) > 0.3).astype(float))
        probs = rng.uniform(0.1, 1, batch)
        weights = (batch * probs / probs.sum()) ** -0.4
        weights = lib.tensor(weights / weights.max())

        log_ps = online(states, log=True)
        log_ps_a = log_ps[range(batch), actions]
        with lib.no_grad():
            pns = online(next_states)
            dns = online.support.expand_as(pns) * pns
            argmax_indices_ns = dns.sum(2).argmax(1)
            target.reset_noise()
            pns = target(next_states)
            pns_a = pns[range(batch), argmax_indices_ns]
            Tz = returns.unsqueeze(1) + nonterminals * (0.99 ** 3) * online.support.unsqueeze(0)
            Tz = Tz.clamp(min=v_min, max=v_max)
            b = (Tz - v_min) / delta_z
            l, u = b.floor().to(lib.int64), b.ceil().to(lib.int64)
            l[(u > 0) * (l == u)] -= 1
            u[(l < (atoms - 1)) * (l == u)] += 1
            m = states.new_zeros(batch, atoms)
            offset = lib.linspace(0, ((batch - 1) * atoms), batch).unsqueeze(1).expand(
                batch, atoms).to(actions)
            # (float64 throughout: the original's u.float() would be promoted by PyTorch only)
            m.view(-1).index_add_(0, (l + offset).view(-1), (pns_a * (u.double() - b)).view(-1))
            m.view(-1).index_add_(0, (u + offset).view(-1), (pns_a * (b - l.double())).view(-1))
        loss = -lib.sum(m * log_ps_a, 1)
        online.zero_grad()
        (weights * loss).mean().backward()
        nn.utils.clip_grad_norm_(online.parameters(), 10)
        optimiser.step()
        online.reset_noise()
        record["loss"].append(loss.detach())
        record["prio"].append(loss.detach().cpu().numpy())
        with lib.no_grad():
            online.eval()
            record["q"].append((online(states) * online.support).sum(2).max(1)[1])
            online.train()

        # QR-DQN's quantile Huber loss on the same batch (quantiles from the log-probs)
        quantiles = log_ps[range(batch), actions]
        target_q = (returns.unsqueeze(1) + quantiles.detach().flip(1)).unsqueeze(1)
        td = target_q - quantiles.unsqueeze(2)
        tau = (lib.arange(atoms, dtype=lib.float64) + 0.5) / atoms
        huber = F.smooth_l1_loss(quantiles.unsqueeze(2).expand_as(td), target_q.expand_as(td),
                                 reduction="none", beta=1.0)
        qr = ((tau.view(1, -1, 1) - (td.detach() < 0).double()).abs() * huber).mean(2).sum(1)
        record["qr"].append(qr.detach())
    record["w"] = arrays(online.state_dict())
    record["target"] = arrays(target.state_dict())
    return record


def test_rainbow_c51_projection_noisy_dueling():
    got = both(rainbow)
    assert np.all(np.isfinite(got["prio"]))


def test_lazy_parameters_first_read_under_no_grad_keep_gradients():
    """A sample drawn under ``no_grad`` reads the lazily derived ``probs``/``logits``; read again
    later (entropy, log_prob, mean), they still carry gradients, as PyTorch's lazy_property."""
    def run(lib):
        D = lib.distributions
        x = lib.tensor(np.array([[0.1, 0.5, -0.3], [1.0, -2.0, 0.5]]), requires_grad=True)
        dists = [D.Categorical(logits=2 * x), D.Categorical(probs=lib.softmax(x, -1)),
                 D.Bernoulli(logits=x), D.Bernoulli(probs=lib.sigmoid(x)),
                 D.Geometric(logits=x), D.OneHotCategorical(logits=x),
                 D.ContinuousBernoulli(logits=x), D.Binomial(3, logits=x)]
        with lib.no_grad():
            for d in dists:
                d.sample()
                _ = d.probs, d.logits
        bits = lib.tensor(np.array([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]]))
        values = [lib.tensor([0, 2]), lib.tensor([1, 1]), bits, bits, 2 * bits,
                  lib.eye(3)[[2, 0]], 0.3 + 0.4 * bits, 3 * bits]
        out = []
        for d, value in zip(dists, values):
            for stat in (d.log_prob(value), d.entropy(), d.mean, d.probs, d.logits):
                out.append(lib.autograd.grad(stat.sum(), x, retain_graph=True)[0]
                           if stat.requires_grad else "constant")  # Categorical's NaN mean
        return out

    both(run)


def test_distributions_module_paths():
    """PyTorch's submodule paths import: ``log_normal``, ``one_hot_categorical`` and the rest of
    ``distributions.utils``."""
    from nodegrad.distributions.log_normal import LogNormal
    from nodegrad.distributions.one_hot_categorical import OneHotCategorical
    from nodegrad.distributions.utils import (broadcast_all, lazy_property,
                                              tril_matrix_to_vec, vec_to_tril_matrix)
    assert LogNormal is ng.distributions.LogNormal
    assert OneHotCategorical is ng.distributions.OneHotCategorical
    a, b = broadcast_all(1.0, ng.ones(2, 3))
    assert a.shape == (2, 3) and a.dtype == ng.float64
    m = ng.tensor(np.arange(9.0).reshape(3, 3))
    v = tril_matrix_to_vec(m, diag=-1)
    assert_same(v, torch.distributions.utils.tril_matrix_to_vec(torch.tensor(m.numpy()), -1))
    assert_same(vec_to_tril_matrix(v, diag=-1), np.tril(m.numpy(), -1))
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        _ = ng.distributions.utils.nothing

    class Squared(ng.distributions.Normal):
        calls = 0

        @lazy_property
        def loc_sq(self):
            Squared.calls += 1
            return self.loc ** 2

    x = ng.tensor([2.0], requires_grad=True)
    d = Squared(x, 1.0)
    with ng.no_grad():
        _ = d.loc_sq
    assert d.loc_sq.requires_grad and Squared.calls == 1
    assert isinstance(Squared.loc_sq, lazy_property)


# 9. TD3 (Fujimoto et al.'s reference shape): deep-copied target networks, target policy
#    smoothing, twin critics with Q1, delayed actor updates, Polyak averaging with lerp_

def td3(lib, iterations: int = 6):
    import copy

    nn, F = lib.nn, lib.nn.functional
    rng = np.random.default_rng(50)
    state_dim, action_dim, max_action = 3, 2, 1.0
    discount, tau, policy_noise, noise_clip, policy_freq = 0.99, 0.005, 0.2, 0.5, 2

    class Actor(nn.Module):
        def __init__(self):
            super().__init__()
            self.l1 = nn.Linear(state_dim, 16)
            self.l2 = nn.Linear(16, action_dim)

        def forward(self, state):
            return max_action * lib.tanh(self.l2(F.relu(self.l1(state))))

    class Critic(nn.Module):
        def __init__(self):
            super().__init__()
            self.l1, self.l2 = nn.Linear(state_dim + action_dim, 16), nn.Linear(16, 1)
            self.l4, self.l5 = nn.Linear(state_dim + action_dim, 16), nn.Linear(16, 1)

        def forward(self, state, action):
            sa = lib.cat([state, action], 1)
            return self.l2(F.relu(self.l1(sa))), self.l5(F.relu(self.l4(sa)))

        def Q1(self, state, action):
            return self.l2(F.relu(self.l1(lib.cat([state, action], 1))))

    actor = seeded(lib, Actor())
    actor_target = copy.deepcopy(actor)
    actor_optimizer = lib.optim.Adam(actor.parameters(), lr=3e-3)
    critic = seeded(lib, Critic(), 1)
    critic_target = copy.deepcopy(critic).requires_grad_(False)
    critic_optimizer = lib.optim.Adam(critic.parameters(), lr=3e-3)
    record = {"critic": [], "actor": [], "target": []}
    for total_it in range(1, iterations + 1):
        state = lib.tensor(rng.standard_normal((8, state_dim)))
        action = lib.tensor(rng.uniform(-1, 1, (8, action_dim)))
        next_state = lib.tensor(rng.standard_normal((8, state_dim)))
        reward = lib.tensor(rng.standard_normal((8, 1)))
        not_done = lib.tensor((rng.random((8, 1)) > 0.2).astype(float))
        with lib.no_grad():
            noise = (lib.tensor(rng.standard_normal((8, action_dim))) * policy_noise).clamp(
                -noise_clip, noise_clip)
            next_action = (actor_target(next_state) + noise).clamp(-max_action, max_action)
            target_Q1, target_Q2 = critic_target(next_state, next_action)
            target_Q = lib.min(target_Q1, target_Q2)
            target_Q = reward + not_done * discount * target_Q
        current_Q1, current_Q2 = critic(state, action)
        critic_loss = F.mse_loss(current_Q1, target_Q) + F.mse_loss(current_Q2, target_Q)
        critic_optimizer.zero_grad()
        critic_loss.backward()
        critic_optimizer.step()
        record["critic"].append(critic_loss.item())
        if total_it % policy_freq == 0:
            actor_loss = -critic.Q1(state, actor(state)).mean()
            actor_optimizer.zero_grad()
            actor_loss.backward()
            actor_optimizer.step()
            record["actor"].append(actor_loss.item())
            with lib.no_grad():
                for param, target_param in zip(critic.parameters(), critic_target.parameters()):
                    target_param.lerp_(param, tau)
                for param, target_param in zip(actor.parameters(), actor_target.parameters()):
                    target_param.mul_(1 - tau).add_(tau * param)
        assert all(p.grad is None for p in critic_target.parameters())
    record["target"] = [arrays(critic_target.state_dict()), arrays(actor_target.state_dict())]
    record["w"] = [arrays(critic.state_dict()), arrays(actor.state_dict())]
    return record


def test_td3_deepcopy_targets_smoothing_lerp():
    both(td3)


# 10. CleanRL's multi-discrete and invalid-action-masked policies: torch.split of the logits,
#     a Categorical subclass masking with where(-1e8) and its own entropy, masks.type(BoolTensor)

def masked_multidiscrete(lib, steps: int = 3):
    nn = lib.nn
    Categorical = lib.distributions.Categorical
    nvec = np.array([3, 4, 2])
    rng = np.random.default_rng(60)

    class CategoricalMasked(Categorical):
        def __init__(self, probs=None, logits=None, validate_args=None, masks=()):
            self.masks = masks
            if len(self.masks) == 0:
                super().__init__(probs, logits, validate_args)
            else:
                self.masks = masks.type(lib.BoolTensor)
                logits = lib.where(self.masks, logits, lib.tensor(-1e8))
                super().__init__(probs, logits, validate_args)

        def entropy(self):
            if len(self.masks) == 0:
                return super().entropy()
            p_log_p = self.logits * self.probs
            p_log_p = lib.where(self.masks, p_log_p, lib.tensor(0.0))
            return -p_log_p.sum(-1)

    class Agent(nn.Module):
        def __init__(self):
            super().__init__()
            self.actor = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, nvec.sum()))
            self.critic = nn.Linear(5, 1)

        def get_action_and_value(self, x, action_masks, action=None, u=None):
            logits = self.actor(x)
            split_logits = lib.split(logits, nvec.tolist(), dim=1)
            split_masks = lib.split(action_masks, nvec.tolist(), dim=1)
            multi_categoricals = [CategoricalMasked(logits=lg, masks=m)
                                  for lg, m in zip(split_logits, split_masks)]
            if action is None:
                action = lib.stack([lib.tensor([choose(p, ui) for p, ui in zip(c.probs, uc)])
                                    for c, uc in zip(multi_categoricals, u)])
            logprob = lib.stack([c.log_prob(a) for a, c in zip(action, multi_categoricals)])
            entropy = lib.stack([c.entropy() for c in multi_categoricals])
            return action.T, logprob.sum(0), entropy.sum(0), self.critic(x)

    agent = seeded(lib, Agent())
    optimizer = lib.optim.Adam(agent.parameters(), lr=1e-2, eps=1e-5)
    record = {"logp": [], "ent": [], "act": [], "grad": []}
    for _ in range(steps):
        x = lib.tensor(rng.standard_normal((6, 5)))
        masks = lib.tensor((rng.random((6, nvec.sum())) > 0.3).astype(np.int64))
        masks[:, [0, 3, 7]] = 1  # every head keeps an allowed action
        with lib.no_grad():
            action, _, _, _ = agent.get_action_and_value(x, masks, u=rng.random((3, 6)))
        _, logprob, entropy, value = agent.get_action_and_value(x, masks, action.T)
        loss = -(logprob * lib.tensor(rng.standard_normal(6))).mean() - 0.01 * entropy.mean() \
            + 0.5 * value.pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        record["grad"].append([p.grad.clone() for p in agent.parameters()])
        optimizer.step()
        record["logp"].append(logprob.detach())
        record["ent"].append(entropy.detach())
        record["act"].append(action)
    record["w"] = arrays(agent.state_dict())
    return record


def test_cleanrl_masked_multidiscrete():
    got = both(masked_multidiscrete)
    assert all(np.all(np.isfinite(arr(e))) for e in got["ent"])


# 11. Dreamer's discrete latents: straight-through one-hot samples, KL balancing, free nats

def dreamer_latents(lib):
    D = lib.distributions
    rng = np.random.default_rng(70)
    post_logits = lib.tensor(rng.standard_normal((4, 3, 5)), requires_grad=True)
    prior_logits = lib.tensor(rng.standard_normal((4, 3, 5)), requires_grad=True)
    w = lib.tensor(rng.standard_normal((4, 3, 5)))

    def dist(logits):
        return D.Independent(D.OneHotCategoricalStraightThrough(logits=logits), 1)

    post = dist(post_logits)
    z = post.rsample()
    assert (z.detach().sum(-1) == 1).all()
    st = (z * w).sum()  # straight through: the gradient is the probabilities', sample-free
    kl_lhs = D.kl_divergence(dist(post_logits.detach()), dist(prior_logits))
    kl_rhs = D.kl_divergence(post, dist(prior_logits.detach()))
    free = lib.tensor(0.5)
    kl_loss = 0.8 * lib.maximum(kl_lhs, free).mean() + 0.2 * lib.maximum(kl_rhs, free).mean()
    ent = post.entropy()
    g = lib.autograd.grad(st + kl_loss + ent.sum(), [post_logits, prior_logits])
    return {"kl": [kl_lhs, kl_rhs], "loss": kl_loss, "ent": ent, "grad": g,
            "shape": [list(post.batch_shape), list(post.event_shape), list(z.shape)]}


def test_dreamer_straight_through_kl_balancing():
    got = both(dreamer_latents)
    assert got["shape"] == [[4], [3, 5], [4, 3, 5]]


# 12. PPO-PyTorch (the popular single-file version): MultivariateNormal with a diagonal
#     covariance (diag / diag_embed), policy_old synced by state_dict, per-module learning rates

class RolloutBuffer:
    def __init__(self):
        self.actions, self.states, self.logprobs = [], [], []
        self.rewards, self.state_values, self.is_terminals = [], [], []

    def clear(self):
        del self.actions[:], self.states[:], self.logprobs[:]
        del self.rewards[:], self.state_values[:], self.is_terminals[:]


def ppo_pytorch(lib, updates: int = 2):
    nn = lib.nn
    MultivariateNormal = lib.distributions.MultivariateNormal
    state_dim, action_dim, K_epochs, eps_clip, gamma = 4, 2, 4, 0.2, 0.99
    noise = np.random.default_rng(80)

    class ActorCritic(nn.Module):
        def __init__(self, action_std_init):
            super().__init__()
            self.action_var = lib.full((action_dim,), action_std_init * action_std_init)
            self.actor = nn.Sequential(nn.Linear(state_dim, 16), nn.Tanh(),
                                       nn.Linear(16, action_dim), nn.Tanh())
            self.critic = nn.Sequential(nn.Linear(state_dim, 16), nn.Tanh(), nn.Linear(16, 1))

        def set_action_std(self, new_action_std):
            self.action_var = lib.full((action_dim,), new_action_std * new_action_std)

        def act(self, state):
            action_mean = self.actor(state)
            cov_mat = lib.diag(self.action_var).unsqueeze(dim=0)
            dist = MultivariateNormal(action_mean, cov_mat)
            eps = lib.tensor(noise.standard_normal(action_dim))
            action = action_mean + self.action_var.sqrt() * eps  # dist.sample(), shared
            action_logprob = dist.log_prob(action)
            state_val = self.critic(state)
            return action.detach(), action_logprob.detach(), state_val.detach()

        def evaluate(self, state, action):
            action_mean = self.actor(state)
            action_var = self.action_var.expand_as(action_mean)
            cov_mat = lib.diag_embed(action_var)
            dist = MultivariateNormal(action_mean, cov_mat)
            action_logprobs = dist.log_prob(action)
            dist_entropy = dist.entropy()
            state_values = self.critic(state)
            return action_logprobs, state_values, dist_entropy

    buffer = RolloutBuffer()
    policy = seeded(lib, ActorCritic(0.6))
    optimizer = lib.optim.Adam([{"params": policy.actor.parameters(), "lr": 3e-3},
                                {"params": policy.critic.parameters(), "lr": 1e-2}])
    policy_old = ActorCritic(0.6)
    policy_old.load_state_dict(policy.state_dict())
    MseLoss = nn.MSELoss()
    env = Reacher(81)
    record = {"loss": [], "logp": [], "ent": []}
    state = env.reset()
    for update in range(updates):
        for t in range(12):
            with lib.no_grad():
                st = lib.FloatTensor(state).double()
                action, action_logprob, state_val = policy_old.act(st)
            buffer.states.append(st)
            buffer.actions.append(action)
            buffer.logprobs.append(action_logprob)
            buffer.state_values.append(state_val)
            state, reward, _ = env.step(action.detach().cpu().numpy().flatten())
            buffer.rewards.append(reward)
            buffer.is_terminals.append(t == 11)
        rewards = []
        discounted_reward = 0
        for reward, is_terminal in zip(reversed(buffer.rewards), reversed(buffer.is_terminals)):
            if is_terminal:
                discounted_reward = 0
            discounted_reward = reward + (gamma * discounted_reward)
            rewards.insert(0, discounted_reward)
        rewards = lib.tensor(rewards, dtype=lib.float64)
        rewards = (rewards - rewards.mean()) / (rewards.std(dim=0) + 1e-7)
        old_states = lib.squeeze(lib.stack(buffer.states, dim=0)).detach()
        old_actions = lib.squeeze(lib.stack(buffer.actions, dim=0)).detach()
        old_logprobs = lib.squeeze(lib.stack(buffer.logprobs, dim=0)).detach()
        old_state_values = lib.squeeze(lib.stack(buffer.state_values, dim=0)).detach()
        advantages = rewards.detach() - old_state_values.detach()
        for _ in range(K_epochs):
            logprobs, state_values, dist_entropy = policy.evaluate(old_states, old_actions)
            state_values = lib.squeeze(state_values)
            ratios = lib.exp(logprobs - old_logprobs.detach())
            surr1 = ratios * advantages
            surr2 = lib.clamp(ratios, 1 - eps_clip, 1 + eps_clip) * advantages
            loss = -lib.min(surr1, surr2) + 0.5 * MseLoss(state_values, rewards) \
                - 0.01 * dist_entropy
            optimizer.zero_grad()
            loss.mean().backward()
            optimizer.step()
            record["loss"].append(loss.detach())
            record["logp"].append(logprobs.detach())
            record["ent"].append(dist_entropy.detach())
        policy_old.load_state_dict(policy.state_dict())
        buffer.clear()
        action_std = round(max(0.6 - 0.05 * (update + 1), 0.1), 4)
        policy.set_action_std(action_std)
        policy_old.set_action_std(action_std)
    record["w"] = arrays(policy.state_dict())
    return record


def test_ppo_pytorch_multivariate_normal():
    both(ppo_pytorch)


# 13. pytorch_sac's SquashedNormal: a user-written Transform subclass (cached, _call/_inverse/
#     log_abs_det_jacobian) inside a TransformedDistribution subclass with its own mean

def squashed_normal(lib, monkeypatch_noise=None):
    import math

    pyd, F = lib.distributions, lib.nn.functional

    class TanhTransform(pyd.transforms.Transform):
        domain = pyd.constraints.real
        codomain = pyd.constraints.interval(-1.0, 1.0)
        bijective = True
        sign = +1

        def __init__(self, cache_size=1):
            super().__init__(cache_size=cache_size)

        @staticmethod
        def atanh(x):
            return 0.5 * (x.log1p() - (-x).log1p())

        def __eq__(self, other):
            return isinstance(other, TanhTransform)

        def _call(self, x):
            return x.tanh()

        def _inverse(self, y):
            return self.atanh(y)

        def log_abs_det_jacobian(self, x, y):
            return 2. * (math.log(2.) - x - F.softplus(-2. * x))

    class SquashedNormal(pyd.transformed_distribution.TransformedDistribution):
        def __init__(self, loc, scale):
            self.loc = loc
            self.scale = scale
            self.base_dist = pyd.Normal(loc, scale)
            transforms = [TanhTransform()]
            super().__init__(self.base_dist, transforms)

        @property
        def mean(self):
            mu = self.loc
            for tr in self.transforms:
                mu = tr(mu)
            return mu

    rng = np.random.default_rng(90)
    mu = lib.tensor(rng.standard_normal((5, 2)), requires_grad=True)
    log_std = lib.tensor(rng.uniform(-1, 0.5, (5, 2)), requires_grad=True)
    dist = SquashedNormal(mu, log_std.exp())
    action = dist.rsample()
    log_prob = dist.log_prob(action).sum(-1, keepdim=True)
    fresh = dist.log_prob(action.detach()).sum(-1, keepdim=True)  # no cache: the inverse
    q = (action * lib.tensor(rng.standard_normal((5, 2)))).sum(-1, keepdim=True)
    actor_loss = (0.1 * log_prob - q).mean()
    grads = lib.autograd.grad(actor_loss, [mu, log_std])
    t = dist.transforms[0]
    return {"logp": log_prob, "fresh": fresh, "mean": dist.mean, "grad": grads,
            "inv": t.inv(lib.tensor([0.5])), "eq": [float(t == TanhTransform()),
                                                    float(t.inv.inv is t)],
            "ent_base": dist.base_dist.entropy()}


def test_pytorch_sac_squashed_normal(monkeypatch):
    with_normal_noise(monkeypatch, np.random.default_rng(91).standard_normal((5, 2)))
    both(squashed_normal, tol=1e-9)


def test_tensor_constructor_of_a_sequence_is_default_float_as_torch():
    got, want = ng.Tensor([[1, 2], [3, 4]]), torch.Tensor([[1, 2], [3, 4]])
    assert got.dtype == ng.get_default_dtype() and want.dtype == torch.get_default_dtype()
    assert np.array_equal(got.numpy(), want.numpy())
    with pytest.raises(TypeError, match="Tensor: expected an array or a sequence"):
        ng.Tensor(3.0)
