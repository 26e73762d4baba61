// The three systems compared on the same scenario:
// - central: every agent reads every block from the origin (failover to another seed after 30 s); whole blocks,
//   or with scenario.centralTransfer 'reads' only the bytes its reads ask for (nbdkit and a cacheless client).
// - volt: VMThunder's master builds one binary tree per image, breadth-first into the first free slot
//   (fan-out 2, one parent per agent); it notices a dead agent after 30 s and re-attaches the orphans.
// - vmthunderd: each agent runs the daemon's heartbeat (src/topology/driver.ts: planHeartbeat, admission with
//   admitChild at the parent, settleHeartbeat) on a bounded candidate table fed by (delayed) gossip adverts
//   that carry the daemon's presence summaries (summary.ts), publishes adverts when the daemon's policy says
//   one is due (src/p2p/advert-policy.ts: tree changes at most every 250 ms, other news every 2 s, else a 5 s
//   keep-alive), picks sources as src/p2p/peer-source.ts does (parents;
//   then peers advertising the block with free slots; then any advertiser, full ones and seeds included) with
//   the scheduler's chooseSource and hedging, and pays the measured CPU costs of the daemon (costs.ts).

import {
  admitChild, chooseSource, DEFAULT_SCHEDULER_PARAMS, DEFAULT_TOPOLOGY_PARAMS, hedgeDeadlineMs, planHeartbeat,
  settleHeartbeat, validateTopologyParams
} from '../../src/topology/index.js'
import { advertLifetimeMs, type AdmissionReply, type Advert, type Candidate, type ParentState, type SourceChoice, type SourceState, type TopologyParams } from '../../src/topology/index.js'
import { ADVERT_LIFETIME_KEEPALIVES, DEFAULT_ADVERT_POLICY, advertKind, nextAdvertDueMs, nextKeepAliveMs } from '../../src/p2p/advert-policy.js'
import { GOSSIP_D } from '../../src/p2p/gossip-params.js'
import { DEFAULT_NON_CHILD_BURST_BYTES, DEFAULT_NON_CHILD_BYTES_PER_SEC } from '../../src/p2p/block-server.js'
import { LastResortBudget } from '../../src/p2p/last-resort-budget.js'
import type { Clock } from '../../src/p2p/clock.js'
import type { AdvertFacts, AdvertPolicyParams } from '../../src/p2p/advert-policy.js'
import { costsOf, NEIGHBOURS_MAX } from './costs.js'
import type { CostParams } from './costs.js'
import type { Engine, Req, SimNode, System } from './engine.js'
import { SummaryModel } from './summary.js'

export const FAILURE_DETECT_MS = 30_000

export function makeSystem (name: 'central' | 'volt' | 'vmthunderd', e: Engine): System {
  if (name === 'central') return new Central(e)
  if (name === 'volt') return new Volt(e)
  return new VmThunderd(e)
}

// ---------------------------------------------------------------------------------------------------------

class Central implements System {
  readonly name = 'central' as const
  readonly fanoutLimit = Infinity
  private server = -1
  readonly transferBytes?: (s: SimNode, to: SimNode, b: number) => number
  constructor (private readonly e: Engine) {
    // nbdkit serves each NBD read's bytes; the testbed's replay keeps no cache (scenario.centralTransfer)
    if (e.opts.scenario.centralTransfer === 'reads') this.transferBytes = (_s, _to, b) => e.opts.trace.readBytes[b]
  }

  init (): void { this.server = this.e.seeds[0] }
  onNodeAdded (): void {}

  onCrash (n: SimNode): void {
    if (n.idx !== this.server) return
    this.e.at(this.e.nowMs + FAILURE_DETECT_MS, () => {
      const next = this.e.seeds.find(s => this.e.nodes[s].alive)
      if (next === undefined) return
      this.server = next
      for (const m of this.e.nodes) {
        if (!m.alive) continue
        for (const b of [...m.pending.keys()]) if (m.req.get(b)?.src === n.idx) this.e.issue(m, b)
        this.e.retryStalled(m)
      }
    })
  }

  chooseSource (): number { return this.server }
  parentsOf (n: SimNode): readonly number[] { return n.isSeed ? [] : [this.server] }
}

// ---------------------------------------------------------------------------------------------------------

class Volt implements System {
  readonly name = 'volt' as const
  readonly fanoutLimit = 2
  private parent: number[] = []
  private root = -1
  private queue: number[] = []
  private qHead = 0
  /** The master's knowledge: agents it has found dead (30 s after they died). Others it believes alive. */
  private knownDead = new Set<number>()
  constructor (private readonly e: Engine) {}

  init (): void { this.root = this.e.seeds[0]; this.queue = [this.root] }

  onNodeAdded (n: SimNode): void {
    this.parent[n.idx] = -1
    if (n.isSeed) return
    this.attach(n)
  }

  private attach (n: SimNode): void {
    const nodes = this.e.nodes
    while (this.qHead < this.queue.length) {
      const q = nodes[this.queue[this.qHead]]
      if (!this.knownDead.has(q.idx) && q.children.size < 2 && (this.parent[q.idx] >= 0 || q.idx === this.root)) break
      this.qHead++
    }
    if (this.qHead >= this.queue.length) return // no live tree left (root gone, no seed)
    const p = this.queue[this.qHead]
    this.parent[n.idx] = p
    nodes[p].children.add(n.idx)
    this.queue.push(n.idx)
    for (const b of [...n.pending.keys()]) { const r = n.req.get(b); if (r === undefined || !nodes[r.src].alive) this.e.issue(n, b) }
    this.e.retryStalled(n)
  }

  /** Breadth-first order of the live tree from the root: the master's slot order. */
  private rebuildQueue (): void {
    const nodes = this.e.nodes
    const order: number[] = []
    if (!this.knownDead.has(this.root)) {
      order.push(this.root)
      for (let i = 0; i < order.length; i++) {
        const kids = [...nodes[order[i]].children].filter(c => !this.knownDead.has(c)).sort((a, b) => a - b)
        order.push(...kids)
      }
    }
    this.queue = order
    this.qHead = 0
  }

  onCrash (n: SimNode): void {
    this.e.at(this.e.nowMs + FAILURE_DETECT_MS, () => {
      const nodes = this.e.nodes
      this.knownDead.add(n.idx)
      const p = this.parent[n.idx]
      if (p >= 0) nodes[p].children.delete(n.idx)
      this.parent[n.idx] = -1
      const orphans = [...n.children].filter(c => !this.knownDead.has(c)).sort((a, b) => a - b)
      n.children.clear()
      if (n.idx === this.root) {
        const next = this.e.seeds.find(s => !this.knownDead.has(s))
        if (next === undefined) return
        this.root = next
      }
      this.rebuildQueue()
      for (const o of orphans) { this.parent[o] = -1; this.attach(nodes[o]) }
    })
  }

  chooseSource (n: SimNode): number { return this.parent[n.idx] ?? -1 }
  parentsOf (n: SimNode): readonly number[] { const p = this.parent[n.idx]; return p === undefined || p < 0 ? [] : [p] }
}

// ---------------------------------------------------------------------------------------------------------

interface Published { advert: Advert, atMs: number, lifetimeMs: number }

interface VState {
  parents: ParentState[]
  parentIdx: number[]
  depth: number | null
  /** Refusals in force (the driver's map). */
  refusedUntil: Map<string, number>
  /** The daemon's orphan hold (src/topology/driver.ts). */
  orphanedSinceMs: number | null
  /** The last two adverts published (gossip delivers the newest one old enough). */
  cur: Published | undefined
  prev: Published | undefined
  seq: number
  /** Upload load meter (the daemon's uploadMeter): busy time of the upload port over the last heartbeat. */
  loadAtMs: number
  loadBusyMs: number
  load: number
  lastPublishMs: number
  /** The keep-alive interval after the last advert (the daemon's, advert-policy.ts). */
  keepAliveMs: number
  /** What the last advert said (the policy compares the next one with it). */
  lastFacts: AdvertFacts | undefined
  /** When the pending publish timer fires (Infinity: none); an earlier due time schedules another. */
  publishDueMs: number
  /** When the image was added (instance created): the daemon's attach grace counts from it. */
  addedAtMs: number
  /** The candidate table of the last heartbeat: the peers this agent knows adverts of (sources too). */
  cand: number[]
  /** Blocks → sources that answered 'not present' (not asked again for that block until it stalls); made on first use. */
  tried: Map<number, number[]> | undefined
  /** Per-source accounting for the scheduler, keyed by node index (kept as SourceState, reused). */
  src: Map<number, SourceState>
  /** src's records of parentIdx, in its order (undefined: not looked up since parentIdx last changed). */
  parentSrc: SourceState[] | undefined
  /** When this agent's hedge scan is next due (Infinity: none scheduled). */
  hedgeScanAtMs: number
  /** The hedge scan's timer callback, made once per agent. */
  hedgeScanFn: () => void
}

/** Gossipsub mesh degree, the agents' own (src/p2p/gossip-params.ts): adverts reach N agents in about log_D(N) hops. */
export { GOSSIP_D }
/** Per-hop processing (validation, queueing) of a gossip message. */
const GOSSIP_HOP_MS = 1
/** A parent that misses a ping is failed after this (pings go out every heartbeat). */
const PING_TIMEOUT_MS = 500
/** A detached agent looks again this soon (the daemon re-runs its heartbeat when a newly eligible advert arrives). */
const DETACHED_RETRY_MS = 25
/** The daemon's attach grace (src/p2p/service.ts): 3 heartbeats, at least 5 s. */
const ATTACH_GRACE_HEARTBEATS = 3
const MIN_ATTACH_GRACE_MS = 5000
/** holdProbability at or above this counts as holding (src/p2p/peer-source.ts). */
const HOLDS_PROBABILITY = 0.75
/**
 * The sim's index of "who has been heard advertising room" is rebuilt lazily when older than this (adverts
 * are published on change and arrive within a few ms; a detached agent looks at a fresher index).
 */
const INDEX_MAX_AGE_MS = 100
/** Numbers per agent in VmThunderd.pub. */
const PUB = 4
const INDEX_MAX_AGE_DETACHED_MS = 10

/** Gossip counters (issue 10 step 6): adverts published per second of simulated time. */
export interface GossipStats {
  advertsPublished: number
  perSecond: number[]
}

class VmThunderd implements System {
  readonly name = 'vmthunderd' as const
  readonly params: Required<TopologyParams>
  readonly fanoutLimit: number
  readonly costs: CostParams
  readonly advertPolicy: AdvertPolicyParams
  readonly startCpuMs: number
  readonly readCost?: { cpuMs: number, wallMs: number }
  /** Wall time of a request beyond CPU, on its first block; absent when 0 (calibrate reports it, scenarios may set it). */
  readonly requestWaitMs?: (n: SimNode, b: number, s: SimNode, r: Req) => number
  readonly gossip: GossipStats = { advertsPublished: 0, perSecond: [] }
  /** Requests charged the per-request CPU at their receiver (blocks of one read to one peer grouped). */
  requestsCharged = 0
  private st: VState[] = []
  private hops = 1
  private eligibleAll: number[] = []
  private eligibleByRack = new Map<number, number[]>()
  private lastExpectedMs = 0
  /** The record of the source pick() chose last (node lastChosenIdx, for agent lastChosenFor): onRequest needs no map lookup. */
  private lastChosen: SourceState | undefined
  private lastChosenIdx = -1
  private lastChosenFor = -1
  private readonly sched = DEFAULT_SCHEDULER_PARAMS
  private readonly summary: SummaryModel
  private readonly attachGraceMs: number
  private readonly readWhileAttaching: boolean
  /** Agents whose adverts one agent receives (the whole swarm: one gossipsub topic per image). */
  private readonly topicAgents: number
  /** What the origin may send to peers that are not its children (src/p2p/block-server.ts), on the simulated clock. */
  private readonly nonChildBudgets = new Map<number, LastResortBudget>()
  private readonly clock: Clock = { nowMs: () => this.e.nowMs, sleep: async () => {} }

  constructor (private readonly e: Engine) {
    const params = validateTopologyParams({ ...DEFAULT_TOPOLOGY_PARAMS, ...(e.opts.scenario.topology as Partial<TopologyParams>) })
    // the daemon's advert policy, with the scenario's overrides as src/p2p/service.ts takes them
    this.advertPolicy = { ...DEFAULT_ADVERT_POLICY, ...e.opts.scenario.advertPolicy }
    // as src/p2p/service.ts: adverts without news come only every keep-alive, a peer is forgotten after three missed
    params.advertTimeoutMs = Math.max(params.advertTimeoutMs, 3 * Math.max(this.advertPolicy.keepAliveMs, params.heartbeatMs))
    this.params = params
    this.fanoutLimit = this.params.childLimit
    this.costs = costsOf(e.opts.scenario)
    this.startCpuMs = this.costs.instanceCreateCpuMs
    if (this.costs.readCpuMs > 0 || this.costs.readWallMs > 0) this.readCost = { cpuMs: this.costs.readCpuMs, wallMs: this.costs.readWallMs }
    if (this.costs.requestWaitMs > 0) this.requestWaitMs = (_n, _b, _s, r) => r.firstOfRequest ? this.costs.requestWaitMs : 0
    this.summary = new SummaryModel(e.opts.trace, e.opts.scenario.imageBytes)
    this.attachGraceMs = Math.max(ATTACH_GRACE_HEARTBEATS * this.params.heartbeatMs, MIN_ATTACH_GRACE_MS)
    this.readWhileAttaching = e.opts.scenario.readWhileAttaching
    this.topicAgents = e.opts.scenario.advertTopicAgents ?? Infinity
    this.minAdvertGapMs = Math.min(this.advertPolicy.minIntervalMs, this.advertPolicy.softIntervalMs, this.advertPolicy.keepAliveMs)
  }

  private indexAtMs = -Infinity
  /**
   * When each agent published its newest and its previous advert (Infinity: not yet), the `cur`/`prev` times,
   * and whether each said every block is held (1) or not (0): a parent's hold needs no look at its state. Side by
   * side per agent ([curAtMs, prevAtMs, curComplete, prevComplete] from PUB * idx, 32 bytes): one cache line per
   * parent looked at, not four.
   */
  private pub: Float64Array = new Float64Array(0)
  /**
   * st[i].parentIdx.length by agent, kept beside it: soleChildrenOf runs on every advertise (every delivered
   * block) over the agent's children, and a flat array is one cache miss per child instead of three.
   */
  private parentCount: Int32Array = new Int32Array(0)
  /**
   * By agent: advertise() is a no-op before this time (ms; 0: not known to be). It is set when the pending publish
   * timer is due no later than the earliest time nextAdvertDueMs can return until the next publish (the last publish
   * plus the shortest interval; the at-once case for an attach ruled out), and cleared when the timer fires, on a
   * publish and when the depth changes. advertise() runs on every delivered block: this skips its facts (the
   * agent's children, state and last advert: several cache misses) while an urgent advert is pending anyway.
   */
  private quietUntilMs: Float64Array = new Float64Array(0)
  /** By agent: st.tried.size, kept beside it (onDeliver looks at the agent's state only when it is not 0). */
  private triedSize: Int32Array = new Int32Array(0)
  /** The shortest interval nextAdvertDueMs adds to the last publish (but the at-once case), keep-alive aside. */
  private readonly minAdvertGapMs: number

  init (): void {
    // Once a second: every agent's background CPU (idle work and the adverts it received last second).
    const perSecond = (): void => {
      const sec = Math.floor(this.e.nowMs / 1000) - 1
      const published = sec >= 0 ? (this.gossip.perSecond[sec] ?? 0) : 0
      const live = this.e.nodes.length
      const received = live === 0 ? 0 : published * Math.min(1, this.topicAgents / live)
      this.e.net.backgroundCpuMsPerS = this.costs.idleCpuMsPerS + received * this.costs.advertCpuMs +
        Math.min(live - 1, NEIGHBOURS_MAX) * this.costs.neighbourCpuMsPerS
      this.e.net.backgroundCpuMsPerAgent += this.e.net.backgroundCpuMsPerS
      this.e.at(this.e.nowMs + 1000, perSecond)
    }
    if (this.costs.idleCpuMsPerS > 0 || this.costs.advertCpuMs > 0 || this.costs.neighbourCpuMsPerS > 0) this.e.at(1000, perSecond)
  }

  private ensureIndex (maxAgeMs: number): void {
    if (this.e.nowMs - this.indexAtMs < maxAgeMs) return
    this.rebuildIndex()
    this.indexAtMs = this.e.nowMs
  }

  onNodeAdded (n: SimNode): void {
    if (PUB * n.idx >= this.pub.length) {
      const cap = Math.max(1024, 2 * n.idx)
      const pub = new Float64Array(PUB * cap)
      pub.set(this.pub)
      for (let i = this.pub.length / PUB; i < cap; i++) { pub[PUB * i] = Infinity; pub[PUB * i + 1] = Infinity }
      this.pub = pub
      const pc = new Int32Array(cap); pc.set(this.parentCount); this.parentCount = pc
      const q = new Float64Array(cap); q.set(this.quietUntilMs); this.quietUntilMs = q
      const t = new Int32Array(cap); t.set(this.triedSize); this.triedSize = t
    }
    this.hops = Math.max(1, Math.ceil(Math.log(this.e.nodes.length) / Math.log(GOSSIP_D)))
    if (!n.isSeed) this.summary.track(n.idx)
    this.st[n.idx] = {
      parents: [], parentIdx: [], depth: n.isSeed ? 0 : null, refusedUntil: new Map(), orphanedSinceMs: null, cur: undefined, prev: undefined, seq: 0,
      loadAtMs: n.startMs, loadBusyMs: 0, load: 0, lastPublishMs: -Infinity, keepAliveMs: 0, lastFacts: undefined, publishDueMs: Infinity, addedAtMs: n.startMs, cand: [], tried: undefined,
      src: new Map(), parentSrc: undefined, hedgeScanAtMs: Infinity, hedgeScanFn: () => this.hedgeScan(n)
    }
    this.advertise(n)
    // the first selection runs when the agent starts, then on a heartbeat with a random phase
    const phase = this.e.sysRng.next() * this.params.heartbeatMs
    const tick = (): void => {
      if (!n.alive) return
      this.tick(n)
      this.e.at(this.e.nowMs + this.params.heartbeatMs, tick)
    }
    this.e.at(n.startMs, () => { if (n.alive) this.tick(n) })
    this.e.at(n.startMs + phase, tick)
  }

  onCrash (): void {}

  private childLimitOf (n: SimNode): number {
    return n.isSeed ? this.e.opts.scenario.seedChildLimit : this.params.childLimit
  }

  private complete (n: SimNode): boolean { return n.isSeed || n.promoted }

  /**
   * n's children that had it as their only parent after their last heartbeat: what each one's next ADMIT reports
   * (src/p2p/heartbeat.ts, children.ts; parentIdx changes only at a heartbeat); `except` not counted.
   */
  private soleChildrenOf (n: SimNode, except = -1): number {
    let count = 0
    const pc = this.parentCount
    for (const c of n.children) if (c !== except && (c < pc.length ? pc[c] : 0) <= 1) count++
    return count
  }

  /** What an advert of n says now (the policy's facts; src/p2p/adverts.ts factsOf), written into `f`. */
  private factsOf (n: SimNode, f: AdvertFacts): AdvertFacts {
    const total = this.summary.totalBlocks
    const limit = this.childLimitOf(n)
    const s = this.st[n.idx]
    f.depth = s.depth; f.heldBlocks = this.complete(n) ? total : n.held; f.totalBlocks = total
    f.childCount = Math.min(n.children.size, limit); f.childLimit = limit; f.uploadLoad = s.load
    // src/p2p/children.ts soleFull: a relay at its bound of sole children says so
    const soleLimit = this.params.soleChildLimit ?? 0
    f.soleFull = soleLimit > 0 && n.children.size >= soleLimit && !this.complete(n) && this.soleChildrenOf(n) >= soleLimit
    f.booting = n.boots && n.doneMs < 0 && n.startMs <= this.e.nowMs ? 1 : 0
    return f
  }

  /**
   * advertise() asks the policy on every delivered block and most of the time publishes nothing: the facts and
   * the policy's input are filled in here (nextAdvertDueMs only reads them), copied only when published.
   */
  private readonly scratchFacts: AdvertFacts = { depth: null, heldBlocks: 0, totalBlocks: 0, childCount: 0, childLimit: 0, uploadLoad: 0, booting: 0, soleFull: false }
  private readonly policyInput: { facts: AdvertFacts, last: AdvertFacts | undefined, lastPublishMs: number, keepAliveMs: number, params: AdvertPolicyParams } =
    { facts: this.scratchFacts, last: undefined, lastPublishMs: 0, keepAliveMs: 0, params: DEFAULT_ADVERT_POLICY }

  /**
   * The daemon's publish (src/p2p/adverts.ts): something may have changed (heartbeat, blocks, children), so
   * publish now or when advert-policy.ts says one is due; one timer per agent, at the earliest due time, that
   * re-evaluates when it fires.
   */
  private advertise (n: SimNode): void {
    if (!n.alive) return
    const now = this.e.nowMs
    if (now < this.quietUntilMs[n.idx]) return
    const s = this.st[n.idx]
    const facts = this.factsOf(n, this.scratchFacts)
    const input = this.policyInput
    input.last = s.lastFacts; input.lastPublishMs = s.lastPublishMs; input.keepAliveMs = s.keepAliveMs; input.params = this.advertPolicy
    const dueMs = nextAdvertDueMs(input)
    input.last = undefined
    if (dueMs <= now) { this.publishNow(n, { ...facts }); return }
    if (s.publishDueMs > dueMs) {
      s.publishDueMs = dueMs
      this.e.at(dueMs, () => { if (s.publishDueMs !== dueMs) return; s.publishDueMs = Infinity; this.quietUntilMs[n.idx] = 0; this.advertise(n) })
    }
    // nextAdvertDueMs returns at least lastPublishMs + the shortest gap unless the last advert had no depth and
    // now there is one: until then nothing can come before the pending timer
    const last = s.lastFacts
    if (last === undefined || (last.depth === null && s.depth !== null)) return
    const lowestMs = s.lastPublishMs + this.minAdvertGapMs
    if (lowestMs > now && s.publishDueMs <= lowestMs) this.quietUntilMs[n.idx] = lowestMs
  }

  private publishNow (n: SimNode, facts: AdvertFacts): void {
    const s = this.st[n.idx]
    const now = this.e.nowMs
    s.publishDueMs = Infinity
    this.quietUntilMs[n.idx] = 0
    s.keepAliveMs = nextKeepAliveMs(advertKind(facts, s.lastFacts, false, this.advertPolicy), s.keepAliveMs, this.advertPolicy)
    s.lastPublishMs = now
    s.lastFacts = facts
    s.prev = s.cur
    const pub = this.pub; const k = PUB * n.idx
    pub[k + 1] = pub[k]
    pub[k] = now
    pub[k + 3] = pub[k + 2]
    pub[k + 2] = facts.heldBlocks === facts.totalBlocks ? 1 : 0
    s.cur = {
      atMs: now,
      lifetimeMs: ADVERT_LIFETIME_KEEPALIVES * s.keepAliveMs,
      advert: {
        peerId: n.id, imageId: 'image', rootHex: 'root', seq: ++s.seq, depth: facts.depth, heldBlocks: facts.heldBlocks,
        totalBlocks: facts.totalBlocks, childCount: facts.childCount, childLimit: facts.childLimit, uploadLoad: facts.uploadLoad,
        ...(facts.soleFull === true ? { soleFull: true } : {})
      }
    }
    this.gossip.advertsPublished++
    const sec = Math.floor(now / 1000)
    const ps = this.gossip.perSecond
    while (ps.length <= sec) ps.push(0)
    ps[sec]++
  }

  /** The upload meter behind the advertised load: the upload port's busy share over the last heartbeat or so. */
  private meterLoad (n: SimNode): void {
    const s = this.st[n.idx]
    const now = this.e.nowMs
    if (now - s.loadAtMs < this.params.heartbeatMs / 2) return
    const busyMs = this.e.net.uploadBusyMs(n.idx)
    s.load = Math.min(1, Math.max(0, (busyMs - s.loadBusyMs) / (now - s.loadAtMs)))
    s.loadAtMs = now
    s.loadBusyMs = busyMs
  }

  private gossipDelayMs (from: number, to: number): number {
    return this.hops * (this.e.net.latencyMs(from, to) + GOSSIP_HOP_MS)
  }

  /** The newest advert of `from` that has reached `to` by now. */
  private seen (from: number, to: number): Published | undefined {
    // publish times in flat arrays: most calls are answered without touching the agent's state
    const d = this.gossipDelayMs(from, to)
    const now = this.e.nowMs
    if (this.pub[PUB * from] + d <= now) return this.st[from].cur
    if (this.pub[PUB * from + 1] + d <= now) return this.st[from].prev
    return undefined
  }

  /** Who looks like a possible parent, from the adverts published so far (refreshed every heartbeat). */
  private rebuildIndex (): void {
    const all: number[] = []
    const byRack = new Map<number, number[]>()
    const now = this.e.nowMs
    for (const n of this.e.nodes) {
      const a = this.st[n.idx]?.cur
      // A dead agent's advert keeps only the receivers' own timeout (the daemon drops the lifetime on disconnect).
      if (a === undefined || now - a.atMs > advertLifetimeMs(n.alive ? a : {}, this.params)) continue
      if (a.advert.depth === null || a.advert.childCount >= a.advert.childLimit) continue
      all.push(n.idx)
      const rack = this.e.net.hosts[n.idx].rack
      const l = byRack.get(rack)
      if (l === undefined) byRack.set(rack, [n.idx]); else l.push(n.idx)
    }
    this.eligibleAll = all
    this.eligibleByRack = byRack
  }

  /** The bounded candidate table the p2p layer would keep: parents, seeds, and a sample of adverts heard. */
  private candidateTable (n: SimNode): number[] {
    const V = this.e.opts.scenario.candidateTable
    const rng = this.e.sysRng
    this.ensureIndex(this.st[n.idx].parentIdx.length === 0 ? INDEX_MAX_AGE_DETACHED_MS : INDEX_MAX_AGE_MS)
    const set = new Set<number>(this.st[n.idx].parentIdx)
    for (const s of this.e.seeds) set.add(s)
    const local = this.eligibleByRack.get(this.e.net.hosts[n.idx].rack) ?? []
    const sample = (from: number[], until: number): void => {
      if (from.length === 0) return
      if (from.length <= until - set.size) { for (const x of from) set.add(x); return }
      for (let tries = 0; set.size < until && tries < 4 * V; tries++) set.add(from[rng.int(from.length)])
    }
    sample(local, Math.min(V, set.size + Math.ceil(V / 3)))
    sample(this.eligibleAll, V)
    set.delete(n.idx)
    return [...set]
  }

  private tick (n: SimNode): void {
    const e = this.e
    const now = e.nowMs
    const nodes = e.nodes
    const s = this.st[n.idx]
    // children that died are noticed by missed pings
    for (const c of n.children) { const m = nodes[c]; if (!m.alive && now >= m.deathMs + PING_TIMEOUT_MS) n.children.delete(c) }
    const promote = !n.isSeed && !n.promoted && e.opts.promoteComplete === true && n.held === e.blockCount
    if (promote) n.promoted = true // issue 5: an agent holding every block is a seed (as src/p2p/service.ts does)
    if (!n.isSeed) {
      for (const p of s.parents) { const m = nodes[Number(p.peerId.slice(1))]; if (!m.alive && now >= m.deathMs + PING_TIMEOUT_MS) p.failed = true }
      const candidates: Candidate[] = []
      const depthOf = new Map<string, number | null>()
      s.cand = n.promoted ? [] : this.candidateTable(n)
      for (const j of s.cand) {
        const seen = this.seen(j, n.idx)
        if (seen === undefined) continue
        const noise = 1 + 0.1 * (2 * e.sysRng.next() - 1)
        candidates.push({ advert: seen.advert, receivedAtMs: seen.atMs + this.gossipDelayMs(j, n.idx), lifetimeMs: nodes[j].alive ? seen.lifetimeMs : undefined, rttMs: 2 * e.net.latencyMs(n.idx, j) * noise })
        depthOf.set(seen.advert.peerId, seen.advert.depth)
      }
      // the daemon's heartbeat (src/topology/driver.ts); admission is synchronous here (no network exchange)
      const plan = planHeartbeat({
        nowMs: now, selfPeerId: n.id, selfIsSeed: n.promoted, candidates, parents: s.parents, depth: s.depth, refusedUntil: s.refusedUntil,
        params: this.params, childCount: n.children.size, imageId: 'image', rootHex: 'root',
        // The daemon's rule for the image's origin (the one seed a scenario starts with signs the manifest).
        originPeerId: e.seeds.length === 1 ? `n${e.seeds[0]}` : undefined
      })
      for (const d of plan.selection.dropped) {
        const j = Number(d.peerId.slice(1))
        if (nodes[j].children.delete(n.idx)) this.advertise(nodes[j])
        s.src.delete(j)
        s.parentSrc = undefined
      }
      const replies = new Map<string, AdmissionReply>()
      // src/p2p/heartbeat.ts: an agent attaching from nothing (detached, no child) may be refused by a relay at its
      // bound of sole children
      const attaching = plan.selfDepth === null && plan.childCount === 0
      for (const { peerId, kept } of plan.ask) {
        const j = Number(peerId.slice(1))
        const pm = nodes[j]
        // a dead parent whose pings have not yet failed still looks alive (the renewal is in flight)
        if (kept) { replies.set(peerId, 'accepted'); continue }
        if (!pm.alive) { replies.set(peerId, 'error'); continue }
        const ok = admitChild({
          childCount: pm.children.size, childLimit: this.childLimitOf(pm), isAlreadyChild: pm.children.has(n.idx), selfDepth: this.st[j].depth,
          soleChildren: this.soleChildrenOf(pm, n.idx), attaching, soleChildLimit: this.params.soleChildLimit ?? 0
        }).admit
        if (ok) { pm.children.add(n.idx); this.advertise(pm) }
        replies.set(peerId, ok ? 'accepted' : 'refused')
      }
      const res = settleHeartbeat(plan, {
        nowMs: now, selfIsSeed: n.promoted, parents: s.parents, replies, heartbeatMs: this.params.heartbeatMs, depthOf: id => depthOf.get(id) ?? null,
        orphanedSinceMs: s.orphanedSinceMs
      })
      s.orphanedSinceMs = res.orphanedSinceMs
      s.parents = res.parents
      s.parentIdx = res.parents.filter(p => !p.failed).map(p => Number(p.peerId.slice(1)))
      this.parentCount[n.idx] = s.parentIdx.length
      s.parentSrc = undefined
      s.refusedUntil = res.refusedUntil
      s.depth = res.depth
      this.quietUntilMs[n.idx] = 0
      if (res.again) e.at(now, () => { if (n.alive) this.tick(n) })
      if (!n.promoted) {
        // fail over what was asked of a parent we no longer have, and ask for what waited for a source
        if (n.pending.size > 0) {
          const live = new Set(s.parentIdx)
          for (const b of [...n.pending.keys()]) {
            const r = n.req.get(b)
            if (r !== undefined && !live.has(r.src) && !nodes[r.src].alive) e.issue(n, b)
          }
        }
        if (s.tried !== undefined) { // peers tried earlier may hold it by now (peer-source.ts)
          for (const b of n.stalled) s.tried.delete(b)
          this.triedSize[n.idx] = s.tried.size
        }
        e.retryStalled(n)
        if (s.parentIdx.length === 0) this.e.at(now + DETACHED_RETRY_MS, () => { if (n.alive && this.st[n.idx].parentIdx.length === 0) this.tick(n) })
      }
    }
    this.meterLoad(n)
    this.advertise(n)
  }

  private sourceState (n: SimNode, j: number): SourceState {
    const s = this.st[n.idx]
    let st = s.src.get(j)
    if (st === undefined) {
      st = {
        peerId: `n${j}`, holds: false, queuedBytes: 0, throughputBytesPerS: this.e.net.uploadBytesPerMs(j) * 1000,
        rttMs: 2 * this.e.net.latencyMs(n.idx, j), inFlight: 0, failed: false
      }
      s.src.set(j, st)
    }
    return st
  }

  /** holdProbability of j's advert as n has it now (the daemon's summary). */
  private holdProbability (j: number, seen: Published, b: number): number {
    return this.summary.holdProbability(this.e.arrival, j * this.e.blockCount, b, seen.atMs, seen.advert.heldBlocks === seen.advert.totalBlocks)
  }

  private attaching (n: SimNode): boolean {
    const s = this.st[n.idx]
    return !this.complete(n) && s.parentIdx.length === 0 && this.e.nowMs - s.addedAtMs < this.attachGraceMs
  }

  /** The scheduler's request (reused: chooseSource only reads it). */
  private readonly blockReq = { blockIndex: 0, sizeBytes: 0 }

  /** The source records of n's parents, in parentIdx order (made once per parent set; their initial values are static). */
  private parentSources (n: SimNode, s: VState): SourceState[] {
    const out = s.parentIdx.map(j => this.sourceState(n, j))
    s.parentSrc = out
    return out
  }

  /** Whether j's newest advert that reached `to` by now says it holds block b (holdProbability, the daemon's summary). */
  private advertHolds (j: number, to: number, b: number): boolean {
    const d = this.gossipDelayMs(j, to)
    const now = this.e.nowMs
    let atMs: number; let complete: number
    const pub = this.pub; const k = PUB * j
    if (pub[k] + d <= now) { atMs = pub[k]; complete = pub[k + 2] } else if (pub[k + 1] + d <= now) { atMs = pub[k + 1]; complete = pub[k + 3] } else return false
    return this.summary.holdProbability(this.e.arrival, j * this.e.blockCount, b, atMs, complete === 1) >= HOLDS_PROBABILITY
  }

  /**
   * src/p2p/peer-source.ts's pick: the parents (they relay what they lack, at the relay penalty); else peers
   * whose advert says they hold the block and that have a free slot; else, as a last resort (not for a hedge,
   * not while attaching unless readWhileAttaching), any peer advertising the block, seeds included.
   */
  private pick (n: SimNode, b: number, exclude: readonly number[] | undefined, hedge: boolean): number {
    const s = this.st[n.idx]
    this.lastChosen = undefined
    this.lastChosenFor = n.idx
    const req = this.blockReq
    req.blockIndex = b
    req.sizeBytes = this.e.blockSizeBytes
    const parents = s.parentIdx
    if (parents.length > 0) {
      const srcs = s.parentSrc ?? this.parentSources(n, s)
      let tier = srcs; let idx = parents
      if (exclude !== undefined) {
        tier = []; idx = []
        for (let i = 0; i < parents.length; i++) if (!exclude.includes(parents[i])) { tier.push(srcs[i]); idx.push(parents[i]) }
      }
      for (let i = 0; i < tier.length; i++) tier[i].holds = this.advertHolds(idx[i], n.idx, b)
      if (tier.length > 0) return this.chosen(chooseSource(req, tier, this.sched), tier, idx)
    }
    const tier: SourceState[] = []; const tierIdx: number[] = []
    const full: SourceState[] = []; const fullIdx: number[] = []
    for (const j of s.cand) {
      if (exclude?.includes(j) === true || parents.includes(j)) continue
      const seen = this.seen(j, n.idx)
      if (seen === undefined) continue
      const p = this.holdProbability(j, seen, b)
      if (p <= 0) continue
      const st = this.sourceState(n, j)
      st.holds = p >= HOLDS_PROBABILITY
      const a = seen.advert
      if (a.childCount >= a.childLimit || a.depth === 0) { full.push(st); fullIdx.push(j) } else { tier.push(st); tierIdx.push(j) }
    }
    if (tier.length > 0) return this.chosen(chooseSource(req, tier, this.sched), tier, tierIdx)
    const lastResort = !hedge && (this.readWhileAttaching || !this.attaching(n))
    if (lastResort && full.length > 0) return this.chosen(chooseSource(req, full, this.sched), full, fullIdx)
    return -1
  }

  /** The node index of the chosen source (`idx[i]` is the node of `list[i]`). */
  private chosen (c: SourceChoice | null, list: readonly SourceState[], idx: readonly number[]): number {
    if (c === null) return -1
    this.lastExpectedMs = c.expectedMs
    this.lastChosen = list[c.index]
    this.lastChosenIdx = idx[c.index]
    return idx[c.index]
  }

  chooseSource (n: SimNode, b: number): number {
    if (this.complete(n)) return -1
    return this.pick(n, b, this.triedSize[n.idx] === 0 ? undefined : this.st[n.idx].tried?.get(b), false)
  }

  relays (s: SimNode, to: SimNode): boolean { return s.children.has(to.idx) }

  /** src/p2p/block-server.ts nonChildBudget: the origin serves peers that are not its children within one budget. */
  refuses (s: SimNode, to: SimNode): boolean {
    if (s.idx !== this.e.seeds[0] || s.children.has(to.idx)) return false
    let budget = this.nonChildBudgets.get(s.idx)
    if (budget === undefined) {
      budget = new LastResortBudget(DEFAULT_NON_CHILD_BURST_BYTES, DEFAULT_NON_CHILD_BYTES_PER_SEC, this.clock)
      this.nonChildBudgets.set(s.idx, budget)
    }
    return !budget.tryTake(this.e.blockSizeBytes)
  }

  onNotPresent (n: SimNode, b: number, src: number, r: Req): void {
    this.release(r)
    const s = this.st[n.idx]
    s.tried ??= new Map()
    const tried = s.tried.get(b)
    if (tried === undefined) s.tried.set(b, [src]); else if (!tried.includes(src)) tried.push(src)
    this.triedSize[n.idx] = s.tried.size
    if (n.req.get(b)?.serial === r.serial) this.e.issue(n, b)
  }

  onRequest (n: SimNode, _b: number, r: Req): void {
    const s = this.st[n.idx]
    // the record pick() just chose (the same object sourceState would find), else the lookup
    const chosen = this.lastChosen
    const st = chosen !== undefined && this.lastChosenFor === n.idx && this.lastChosenIdx === r.src ? chosen : this.sourceState(n, r.src)
    this.lastChosen = undefined
    r.source = st
    st.queuedBytes += this.e.blockSizeBytes
    st.inFlight++
    if (r.hedged) return
    r.expectedMs = this.lastExpectedMs
    if (r.prefetch) return // prefetch requests are not hedged (src/p2p/peer-source.ts); a hedge may go to any advertiser
    const deadline = hedgeDeadlineMs(r, this.sched)
    if (r.arrivalMs >= 0 && r.arrivalMs <= deadline) return // already on its way, in time: no hedge can be needed
    if (deadline < s.hedgeScanAtMs) {
      s.hedgeScanAtMs = deadline
      this.e.at(deadline, s.hedgeScanFn)
    }
  }

  /** Sends one hedge for every request of n past its deadline; one scan timer per agent. */
  private hedgeScan (n: SimNode): void {
    const s = this.st[n.idx]
    if (!n.alive || this.e.nowMs < s.hedgeScanAtMs) return // superseded by an earlier scan's reschedule
    s.hedgeScanAtMs = Infinity
    let next = Infinity
    const presence = this.e.presence; const base = n.idx * this.e.blockCount
    // forEach, not for-of over entries (an [b, r] array per entry); same order, and a hedge does not change n.req
    n.req.forEach((r, b) => {
      if (r.hedged || r.prefetch || presence[base + b] === 1) return
      const deadline = hedgeDeadlineMs(r, this.sched)
      if (r.arrivalMs >= 0 && r.arrivalMs <= deadline) return
      if (deadline > this.e.nowMs) { next = Math.min(next, deadline); return }
      r.hedged = true
      const tried = s.tried?.get(b)
      const t = this.pick(n, b, tried === undefined ? [r.src] : [...tried, r.src], true)
      if (t >= 0) this.e.sendRequest(n, b, t, true)
    })
    if (next < Infinity) { s.hedgeScanAtMs = next; this.e.at(next, s.hedgeScanFn) }
  }

  /** The request is over (block arrived, or 'not present'): off its source's queue. */
  private release (r: Req): SourceState | undefined {
    // the record the request was counted in (a source dropped and met again has a new one, left alone)
    const st = r.source as SourceState | undefined
    if (st === undefined) return undefined
    st.queuedBytes = Math.max(0, st.queuedBytes - this.e.blockSizeBytes)
    st.inFlight = Math.max(0, st.inFlight - 1)
    return st
  }

  onArrive (_n: SimNode, _b: number, _src: number, r: Req): void {
    const st = this.release(r)
    if (st === undefined) return
    const elapsedMs = this.e.nowMs - r.startedAtMs
    if (elapsedMs > 0) {
      const observed = this.e.blockSizeBytes / elapsedMs * 1000
      st.throughputBytesPerS = 0.8 * (st.throughputBytesPerS ?? observed) + 0.2 * observed
    }
  }

  onDeliver (n: SimNode, b: number): void {
    this.summary.arrived(n.idx, b, this.e.nowMs)
    if (this.triedSize[n.idx] !== 0) {
      const tried = this.st[n.idx].tried as Map<number, number[]>
      tried.delete(b)
      this.triedSize[n.idx] = tried.size
    }
    // a complete agent becomes a seed at once (the daemon re-advertises on the last block), not at its next heartbeat
    if (this.e.opts.promoteComplete === true && !n.isSeed && !n.promoted && n.held === this.e.blockCount) this.e.at(this.e.nowMs, () => { if (n.alive) this.tick(n) })
    else this.advertise(n) // blocks added: the policy decides when to say so
  }

  // ---- the cost model (costs.ts): CPU per request and per block at both ends ----

  // Blocks of one read asked of one peer at one moment are one request (engine.ts: Req.firstOfRequest); its
  // first block carries the per-request costs at both ends.

  sendCpuMs (_s: SimNode, _to: SimNode, _b: number, r: Req): number {
    return this.costs.blockSendCpuMs + (r.firstOfRequest ? this.costs.requestSendCpuMs : 0)
  }

  recvCpuMs (_n: SimNode, _b: number, _s: SimNode, r: Req): number {
    if (!r.firstOfRequest) return this.costs.blockRecvCpuMs
    this.requestsCharged++
    return this.costs.blockRecvCpuMs + this.costs.requestRecvCpuMs
  }


  parentsOf (n: SimNode): readonly number[] { return this.st[n.idx]?.parentIdx ?? [] }
}

export type { Req }
