"""The env's data: parameters (traced, vmappable), state, observation and action.

Three homes (STYLE rule 1): shapes live on the env object (static); every numeric knob lives in
`EnvParams` (a pytree of arrays, so scenarios and domain randomisation are data); what evolves lives
in `EnvState`.
"""

from __future__ import annotations

import jax
from flax import struct


@struct.dataclass
class ChannelParams:
    bw_log_mean: jax.Array      # Gauss-Markov: stationary mean of log(bytes/s)
    bw_rho: jax.Array           # Gauss-Markov: slot-to-slot correlation of log bandwidth
    bw_log_std: jax.Array       # Gauss-Markov: stationary std of log bandwidth
    regime_trans: jax.Array     # [3, 3] regime chain (good, degraded, outage) transition matrix
    regime_log_mean: jax.Array  # [3] mean log(bytes/s) per regime
    regime_log_std: jax.Array   # [3] std of log bandwidth within a regime
    trace_bw: jax.Array         # [T] bytes/s of a replayed trace (T = 1 when not replaying)
    trace_step: jax.Array       # trace samples advanced per slot
    bw_min: jax.Array           # floor on bandwidth, bytes/s (a 0 Mbps sample is an outage, not a division by 0)
    bw_est_log_std: jax.Array   # noise of the agent's bandwidth estimate (log space)
    rtt_mean_s: jax.Array
    rtt_log_std: jax.Array
    h_th: jax.Array             # Rayleigh fading threshold: P(loss) = 1 - exp(-h_th^2 / (2 sigma_h^2))
    fade_log_mean: jax.Array    # log sigma_h follows a Gauss-Markov process
    fade_rho: jax.Array
    fade_log_std: jax.Array
    packet_bytes: jax.Array
    max_retx: jax.Array         # retransmission rounds before a lost packet is zero-filled (<= R_MAX)
    timeout_s: jax.Array        # a request whose split latency exceeds this resumes on the edge from its last token
    p_drop: jax.Array           # P(the link drops in a slot | connected): a disconnection, not a slow link
    p_restore: jax.Array        # P(the link comes back in a slot | disconnected)
    reconnect_s: jax.Array      # extra delay of the first request over a link that just came back
    detect_s: jax.Array         # time for the edge to notice the cloud is unreachable
    queue_bytes: jax.Array      # bottleneck buffer ahead of the uplink: adds queue_bytes / bw to the RTT
    prefill_chunk: jax.Array    # tokens per chunk of a pipelined split prefill (0: the prompt crosses at once)
    noise_on: jax.Array         # 1.0: activations cross with additive noise at snr_db (Chen et al.); 0.0: digital
    snr_db_mean: jax.Array
    snr_db_std: jax.Array


@struct.dataclass
class WorkloadParams:
    arrival_rate: jax.Array     # requests per second (Poisson)
    class_probs: jax.Array      # [K]
    prompt_lo: jax.Array        # [K] tokens, uniform in [lo, hi]
    prompt_hi: jax.Array
    output_lo: jax.Array        # [K]
    output_hi: jax.Array
    q_max: jax.Array            # backlog cap (requests); arrivals beyond it are dropped


@struct.dataclass
class CloudParams:
    """The shared cloud (splitrl/env/cloud.py): admission queueing and batched decode."""
    slots: jax.Array            # c: sequences the engine decodes together (Erlang-C servers)
    service_s: jax.Array        # mean seconds a background request holds a slot
    batch_knee: jax.Array       # B*: the batch at which a decode step turns compute-bound
    wait_rho: jax.Array         # [NR] utilisation grid of the Erlang-C table
    wait_p: jax.Array           # [NR] P(an arrival waits) = C(c, c·rho)
    load_mean: jax.Array        # background utilisation of the slots: mean,
    load_rho: jax.Array         # slot-to-slot correlation (ar1),
    load_std: jax.Array         # stationary std in logit space (ar1),
    load_max: jax.Array         # cap (< 1)
    load_trace: jax.Array       # [T] load shape per slot (trace kind; [1] otherwise)


@struct.dataclass
class CostParams:
    """Cost lookups packed so that one step reads one row per boundary (see splitrl/env/tables.py)."""
    ctx_grid: jax.Array         # [G] context grid (tokens)
    layer_rows: jax.Array       # [L+1, G, 2, K] per boundary b, grid point g and phase (prefill, decode): the
                                # boundary layer's units and norms on each side, edge prefix (< b), cloud suffix (> b)
    model_rows: jax.Array       # [2, M, G] embedding, head, cloud-only and edge-only totals
    unit_is_attn: jax.Array     # [U] bool
    boundary_mask: jax.Array    # [L+1] bool
    unit_mask: jax.Array        # [L+1, U] bool
    tx_bytes: jax.Array         # [F] bytes/token of the hidden state per transmission format
    mix: jax.Array              # [2 sides, 2 phases]: cost of a split sublayer's units over their whole-layer share
    power_active_w: jax.Array   # edge
    power_idle_w: jax.Array


@struct.dataclass
class RadioParams:
    """The edge's radio (splitrl.profiles.radio, Huang et al.'s LTE power model): powers on top of idle."""
    transfer_w: jax.Array       # W while data moves
    tx_j_per_mbit: jax.Array    # J per Mbit sent
    rx_j_per_mbit: jax.Array    # J per Mbit received
    connected_w: jax.Array      # W in the connected state while a request is in flight
    tail_w: jax.Array           # W for tail_s after the last transfer
    tail_s: jax.Array
    promotion_w: jax.Array      # W for promotion_s when the radio leaves idle (also a delay)
    promotion_s: jax.Array


@struct.dataclass
class PPLParams:
    loss_grid: jax.Array        # [NL] residual packet-loss rates
    snr_grid: jax.Array         # [NS] SNR in dB, increasing
    rows: jax.Array             # [L+1, F + NL + NS] per boundary: ΔPPL per format, at each loss, at each SNR


@struct.dataclass
class RewardParams:
    V: jax.Array                # weight of the penalty against the queue drift (Neely's V)
    w_lat: jax.Array
    w_en: jax.Array
    w_acc: jax.Array
    w_fail: jax.Array           # weight of a failed request (no answer) in the penalty
    energy_budget_j: jax.Array  # per-request edge energy budget (virtual queue Z_E)
    acc_budget: jax.Array       # per-request ΔPPL budget (virtual queue Z_A)
    lat_ref_s: jax.Array        # normalisers so every term is O(1)
    energy_ref_j: jax.Array
    acc_ref: jax.Array
    z_max: jax.Array            # cap on the virtual queues (normalised units)
    scale: jax.Array            # final reward multiplier
    w_cloud: jax.Array          # price of the cloud's compute (0: free, the default) ...
    cloud_ref_s: jax.Array      # ... per cloud-only request's GPU-seconds at typical conditions


@struct.dataclass
class HeatParams:
    """The edge's first-order thermal model (splitrl/env/heat.py, docs/environment.md); r_th = 0 turns it off."""
    ambient_c: jax.Array        # the air around the device, °C
    start_lo_c: jax.Array       # an episode starts at a temperature uniform in [start_lo_c, start_hi_c]
    start_hi_c: jax.Array
    r_th: jax.Array             # K/W: steady-state rise over ambient per watt the edge draws
    tau_s: jax.Array            # s: thermal time constant
    throttle_c: jax.Array       # the governor starts to cut the clock here ...
    limit_c: jax.Array          # ... and runs at min_speed from here up
    min_speed: jax.Array        # share of full compute speed at limit_c


@struct.dataclass
class SessionParams:
    """Conversations (splitrl/env/sessions.py `migration`, docs/environment.md "Sessions"); continue_p = 0 turns them off."""
    continue_p: jax.Array       # P(the next request is the next turn of the same conversation) = 1 − 1/mean turns
    kv_bytes: jax.Array         # KV-cache bytes per token of one layer (K and V, fp16)
    max_ctx: jax.Array          # the model's context window: a conversation that would outgrow it starts afresh
    mask_ctx: jax.Array         # [M] contexts (tokens) at which the edge's memory masks were computed, increasing
    boundary_masks: jax.Array   # [M, L+1] costs.boundary_mask with mask_ctx[m] tokens of KV cache
    unit_masks: jax.Array       # [M, L+1, U] costs.unit_mask likewise


@struct.dataclass
class BatteryParams:
    """The edge's battery (docs/environment.md, "Battery"); capacity_j = inf turns it off."""
    capacity_j: jax.Array       # the battery's energy
    start_lo: jax.Array         # an episode starts at a state of charge uniform in [start_lo, start_hi]
    start_hi: jax.Array
    floor: jax.Array            # at or below this charge the phone stops on-device inference (cloud only)


@struct.dataclass
class EnvParams:
    channel: ChannelParams
    workload: WorkloadParams
    cloud: CloudParams
    costs: CostParams
    radio: RadioParams
    ppl: PPLParams
    reward: RewardParams
    slot_s: jax.Array           # length of one decision slot, seconds
    max_steps_in_episode: jax.Array
    heat: HeatParams
    session: SessionParams
    battery: BatteryParams


@struct.dataclass
class Conditions:
    """One slot's channel and cloud: as they turn out (the env's step), as a causal policy estimates them
    (the bandwidth estimate and last slot's values), or at their typical values (`splitrl.env.nominal`)."""
    bw: jax.Array               # bytes/s
    rtt: jax.Array              # s
    loss_p: jax.Array           # packet-loss probability
    snr_db: jax.Array           # channel SNR (dB; matters where the scenario has analog noise)
    cloud_load: jax.Array       # the cloud's utilisation in [0, 1)
    cloud_wait: jax.Array       # s: admission wait for a batch slot (sampled, or its expectation)
    connected: jax.Array        # 1.0: the cloud is reachable; 0.0: the link is down
    reconnect: jax.Array        # s: extra delay of the first crossing over a link that just came back
    edge_speed: jax.Array = 1.0  # share of its full compute speed the edge runs at (thermal throttling)
    ctx: jax.Array = 0.0        # tokens of the conversation already in the KV cache (0: a new conversation)
    kv_split: jax.Array = 0.0   # where that cache lives: layers < kv_split on the edge (fractional: the boundary layer's share)
    edge_up: jax.Array = 1.0    # 0.0: the edge cannot compute (its battery is at the floor): cloud only, no fallback


@struct.dataclass
class EnvState:
    bw: jax.Array               # true bandwidth of the last slot, bytes/s
    bw_est: jax.Array           # the agent's estimate for the coming slot, bytes/s
    log_bw: jax.Array           # Gauss-Markov latent
    regime: jax.Array           # i32 regime index (regime channel)
    trace_pos: jax.Array        # float position in the trace (trace channel)
    rtt: jax.Array              # last slot's RTT, seconds
    log_sigma_h: jax.Array      # fading scale latent
    loss_p: jax.Array           # packet-loss probability implied by the current fading scale
    snr_db: jax.Array
    cloud_logit: jax.Array      # latent of the cloud's utilisation (ar1 load)
    cloud_pos: jax.Array        # position in the load trace (trace load)
    cloud_load: jax.Array       # the cloud's utilisation in the last slot (reported to the edge)
    cloud_wait_est: jax.Array   # s: the admission wait the cloud publishes for the coming slot (single device:
                                # the Erlang-C expectation at cloud_load; fleet: its queue W / C)
    connected: jax.Array        # 1.0 when the cloud was reachable in the last slot
    link: jax.Array             # state of the two-state Markov link process (1.0: up)
    backlog: jax.Array          # Q, requests
    z_energy: jax.Array         # Z_E (normalised)
    z_acc: jax.Array            # Z_A (normalised)
    prompt_len: jax.Array       # the coming slot's request, tokens
    output_len: jax.Array
    last_boundary: jax.Array    # i32
    last_fmt: jax.Array         # i32
    last_edge_frac: jax.Array   # share of the boundary layer's units placed on the edge
    time: jax.Array             # i32 slot index
    temp_c: jax.Array           # the edge's temperature at the start of the slot, °C (what its sensor reports)
    ctx_len: jax.Array          # tokens of the coming request's conversation already cached (0: a new one)
    kv_split: jax.Array         # layers < kv_split hold that cache on the edge (the last turn's placement)
    soc: jax.Array              # the battery's state of charge at the start of the slot (1.0 without a battery)
    z_battery: jax.Array        # Z_B: energy spent ahead of an even spend-down to the floor (normalised)
    battery_allow_j: jax.Array  # that even spend-down, joules per slot (fixed at reset)


@struct.dataclass
class Observation:
    features: jax.Array         # f32[obs_dim], O(1)
    boundary_mask: jax.Array    # bool[L+1]
    format_mask: jax.Array      # bool[F]
    unit_mask: jax.Array        # bool[L+1, U]: unit may run on the edge when that boundary is chosen


@struct.dataclass
class Action:
    boundary: jax.Array         # i32: edge runs layers < boundary; layer `boundary` is split by `units`
    fmt: jax.Array              # i32: transmission format index (fp16, int8, int4)
    units: jax.Array            # i32[U]: 1 = edge, 0 = cloud (attention units, then FFN chunks)


# ----------------------------------------------------------------------------- the fleet (splitrl/env/fleet.py)
@struct.dataclass
class TraceParams:
    """A replayed serving trace per full minute, lengths clipped to the model's context (docs/fleet.md)."""
    rate_shape: jax.Array       # [M] the minute's arrival rate over the trace's mean rate
    first: jax.Array            # [M] i32 index of the minute's first request in `prompt` / `output`
    count: jax.Array            # [M] i32 requests that arrived in the minute (>= 1)
    prompt: jax.Array           # [R] tokens, clipped: prompt + output <= the model's context
    output: jax.Array           # [R]


@struct.dataclass
class FleetCloudParams:
    """The shared cloud: C replicas drain one FIFO work queue W (replica-seconds)."""
    replicas: jax.Array         # C
    batch_gain: jax.Array       # min(slots, B*): decode sequences a replica runs for the price of one
    wait_ref_s: jax.Array       # W_ref = replicas · wait_ref_s normalises the cloud's Lyapunov term
    bg_rate: jax.Array          # background requests per second (other users), at the trace's mean
    bg_work: jax.Array          # [M] replica-seconds of the minute's mean background request (cloud-only)
    toll: jax.Array             # congestion price: each device's reward is also charged toll x the drift its
                                # offloaded work adds to L_cloud (0: none; the objective never includes it)


@struct.dataclass
class FleetParams:
    device: EnvParams           # the single-device params stacked along a leading device axis [N]
    cell: jax.Array             # [N] i32 cell of each device: its channel draws mix with its cell's
    channel_corr: jax.Array     # correlation of the channel draws of two devices in the same cell
    cloud: FleetCloudParams
    trace: TraceParams
    slot_s: jax.Array
    max_steps_in_episode: jax.Array


@struct.dataclass
class CloudState:
    work: jax.Array             # W: replica-seconds queued at the start of the slot
    util: jax.Array             # the last slot's utilisation (what the load balancer publishes)
    start_s: jax.Array          # the episode's offset into the trace, seconds


@struct.dataclass
class FleetState:
    device: EnvState            # [N]
    cloud: CloudState
    time: jax.Array             # i32 slot index
