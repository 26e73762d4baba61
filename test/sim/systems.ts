// The three systems compared on the same scenario:
// - central: every agent reads every block from the origin (failover to another seed after 30 s).
// - volt: VMThunder's master builds one binary tree per image, breadth-first into the first free slot
//   (fan-out 2, one parent per agent); it notices a dead agent after 30 s and re-attaches the orphans.
// - vmthunderd: each agent runs the production src/topology code: selectParents every heartbeat on a
//   bounded candidate table fed by (delayed) gossip adverts, admitChild at the parent, and the multipath
//   scheduler (chooseSource, hedging, failover) for every block.

import {
  admitChild, chooseHedgeTarget, chooseSource, DEFAULT_SCHEDULER_PARAMS, DEFAULT_TOPOLOGY_PARAMS, depthFromParents,
  hedgeDeadlineMs, selectParents, validateTopologyParams
} from '../../src/topology/index.js'
import type { Advert, Candidate, ParentState, SourceState, TopologyParams } from '../../src/topology/index.js'
import type { Engine, Req, SimNode, System } from './engine.js'

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
  constructor (private readonly e: Engine) {}

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

interface Published { advert: Advert, atMs: number }

interface VState {
  parents: ParentState[]
  parentIdx: number[]
  depth: number | null
  excludedUntil: Map<string, number>
  /** The last two adverts published (gossip delivers the newest one old enough). */
  cur: Published | undefined
  prev: Published | undefined
  seq: number
  lastBusyMs: number
  load: number
  /** Per-source accounting for the scheduler, keyed by node index (kept as SourceState, reused). */
  src: Map<number, SourceState>
  /** src entries aligned with parents (a cache of src lookups). */
  srcArr: Array<SourceState | undefined>
  /** When this agent's hedge scan is next due (Infinity: none scheduled). */
  hedgeScanAtMs: number
}

/** Gossipsub mesh degree: adverts reach N agents in about log_D(N) hops. */
const GOSSIP_D = 6
/** Per-hop processing (validation, queueing) of a gossip message. */
const GOSSIP_HOP_MS = 1
/** A parent that misses a ping is failed after this (pings go out every heartbeat). */
const PING_TIMEOUT_MS = 500
/** Selection rounds per tick when joins are refused. */
const SELECT_ATTEMPTS = 3
/** A detached agent looks again this soon (adverts are published on change, so new parents show up fast). */
const DETACHED_RETRY_MS = 25
/**
 * The sim's index of "who has been heard advertising room" is rebuilt lazily when older than this (adverts
 * are published on change and arrive within a few ms; a detached agent looks at a fresher index).
 */
const INDEX_MAX_AGE_MS = 100
const INDEX_MAX_AGE_DETACHED_MS = 10

class VmThunderd implements System {
  readonly name = 'vmthunderd' as const
  readonly params: Required<TopologyParams>
  readonly fanoutLimit: number
  private st: VState[] = []
  private hops = 1
  private eligibleAll: number[] = []
  private eligibleByRack = new Map<number, number[]>()
  private lastExpectedMs = 0
  private readonly sched = DEFAULT_SCHEDULER_PARAMS

  constructor (private readonly e: Engine) {
    this.params = validateTopologyParams({ ...DEFAULT_TOPOLOGY_PARAMS, ...(e.opts.scenario.topology as Partial<TopologyParams>) })
    this.fanoutLimit = this.params.childLimit
  }

  private indexAtMs = -Infinity

  init (): void {}

  private ensureIndex (maxAgeMs: number): void {
    if (this.e.nowMs - this.indexAtMs < maxAgeMs) return
    this.rebuildIndex()
    this.indexAtMs = this.e.nowMs
  }

  onNodeAdded (n: SimNode): void {
    this.hops = Math.max(1, Math.ceil(Math.log(this.e.nodes.length) / Math.log(GOSSIP_D)))
    this.st[n.idx] = {
      parents: [], parentIdx: [], depth: n.isSeed ? 0 : null, excludedUntil: new Map(), cur: undefined, prev: undefined, seq: 0,
      lastBusyMs: 0, load: 0, src: new Map(), srcArr: [], hedgeScanAtMs: Infinity
    }
    this.publish(n)
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

  private publish (n: SimNode): void {
    const s = this.st[n.idx]
    const up = this.e.net.hosts[n.idx].up
    s.load = Math.min(1, (up.busyMs - s.lastBusyMs) / this.params.heartbeatMs)
    s.lastBusyMs = up.busyMs
    s.prev = s.cur
    s.cur = {
      atMs: this.e.nowMs,
      advert: {
        peerId: n.id, imageId: 'image', rootHex: 'root', seq: ++s.seq, depth: s.depth, heldBlocks: n.held,
        totalBlocks: this.e.blockCount, childCount: n.children.size, childLimit: this.childLimitOf(n), uploadLoad: s.load
      }
    }
  }

  private gossipDelayMs (from: number, to: number): number {
    return this.hops * (this.e.net.latencyMs(from, to) + GOSSIP_HOP_MS)
  }

  /** The newest advert of `from` that has reached `to` by now. */
  private seen (from: number, to: number): Published | undefined {
    const s = this.st[from]
    const d = this.gossipDelayMs(from, to)
    const now = this.e.nowMs
    if (s.cur !== undefined && s.cur.atMs + d <= now) return s.cur
    if (s.prev !== undefined && s.prev.atMs + d <= now) return s.prev
    return undefined
  }

  /** Who looks like a possible parent, from the adverts published so far (refreshed every heartbeat). */
  private rebuildIndex (): void {
    const all: number[] = []
    const byRack = new Map<number, number[]>()
    const now = this.e.nowMs
    for (const n of this.e.nodes) {
      const a = this.st[n.idx]?.cur
      if (a === undefined || now - a.atMs > this.params.advertTimeoutMs) continue
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
    if (!n.isSeed && !n.promoted && e.opts.promoteComplete === true && n.held === e.blockCount) {
      // issue 5: an agent holding every block is a seed (as src/p2p/service.ts does): it leaves its
      // parents, advertises depth 0 and keeps its own child limit
      const res = selectParents({
        nowMs: now, selfPeerId: n.id, selfIsSeed: true, candidates: [], parents: s.parents, excluded: new Set(), params: this.params,
        selfDepth: s.depth, childCount: n.children.size, imageId: 'image', rootHex: 'root'
      })
      for (const d of res.dropped) {
        const j = Number(d.peerId.slice(1))
        nodes[j].children.delete(n.idx)
        s.src.delete(j)
      }
      s.parents = []
      s.parentIdx = []
      s.srcArr.length = 0
      s.depth = res.depth
      n.promoted = true
    }
    if (!n.isSeed && !n.promoted) {
      for (const p of s.parents) { const m = nodes[Number(p.peerId.slice(1))]; if (!m.alive && now >= m.deathMs + PING_TIMEOUT_MS) p.failed = true }
      const excluded = new Set<string>()
      for (const [id, until] of s.excludedUntil) if (until > now) excluded.add(id); else s.excludedUntil.delete(id)
      const candidates: Candidate[] = []
      const depthOf = new Map<string, number | null>()
      for (const j of this.candidateTable(n)) {
        const seen = this.seen(j, n.idx)
        if (seen === undefined) continue
        const noise = 1 + 0.1 * (2 * e.sysRng.next() - 1)
        candidates.push({ advert: seen.advert, receivedAtMs: seen.atMs + this.gossipDelayMs(j, n.idx), rttMs: 2 * e.net.latencyMs(n.idx, j) * noise })
        depthOf.set(seen.advert.peerId, seen.advert.depth)
      }
      // a refused join is retried at once with the refuser excluded (bounded: SELECT_ATTEMPTS per tick)
      for (let attempt = 0; attempt < SELECT_ATTEMPTS; attempt++) {
        const res = selectParents({
          nowMs: now, selfPeerId: n.id, selfIsSeed: false, candidates, parents: s.parents, excluded, params: this.params,
          selfDepth: s.depth, childCount: n.children.size, imageId: 'image', rootHex: 'root'
        })
        for (const d of res.dropped) {
          const j = Number(d.peerId.slice(1))
          nodes[j].children.delete(n.idx)
          s.src.delete(j)
        }
        const old = new Map(s.parents.map(p => [p.peerId, p]))
        const next: ParentState[] = []
        let refused = 0
        for (const id of res.parents) {
          const prev = old.get(id)
          if (prev !== undefined) { next.push(prev); continue }
          const j = Number(id.slice(1))
          const pm = nodes[j]
          const ok = pm.alive && admitChild({
            childCount: pm.children.size, childLimit: this.childLimitOf(pm), isAlreadyChild: pm.children.has(n.idx), selfDepth: this.st[j].depth
          }).admit
          if (ok) { pm.children.add(n.idx); next.push({ peerId: id, sinceMs: now, failed: false }) } else {
            refused++
            s.excludedUntil.set(id, now + 2 * this.params.heartbeatMs)
            excluded.add(id)
          }
        }
        s.parents = next
        s.parentIdx = next.map(p => Number(p.peerId.slice(1)))
        s.srcArr.length = 0
        s.depth = depthFromParents(next.map(p => depthOf.get(p.peerId) ?? null))
        if (refused === 0) break
      }
      // fail over what was asked of a parent we no longer have, and ask for what waited for a parent
      if (n.pending.size > 0) {
        const live = new Set(s.parentIdx)
        for (const b of [...n.pending.keys()]) {
          const r = n.req.get(b)
          if (r !== undefined && !live.has(r.src)) e.issue(n, b)
        }
      }
      e.retryStalled(n)
      if (s.parentIdx.length === 0) this.e.at(now + DETACHED_RETRY_MS, () => { if (n.alive && this.st[n.idx].parentIdx.length === 0) this.tick(n) })
    }
    this.publish(n)
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

  /** The scheduler's view of n's usable parents for block b (SourceState objects reused between calls). */
  private sources (n: SimNode, b: number, out: SourceState[]): SourceState[] {
    out.length = 0
    const s = this.st[n.idx]
    const presence = this.e.presence
    const B = this.e.blockCount
    for (let i = 0; i < s.parents.length; i++) {
      if (s.parents[i].failed) continue
      const j = s.parentIdx[i]
      let st = s.srcArr[i]
      if (st === undefined || st.peerId !== s.parents[i].peerId) { st = this.sourceState(n, j); s.srcArr[i] = st }
      st.holds = presence[j * B + b] === 1
      out.push(st)
    }
    return out
  }

  private readonly scratch: SourceState[] = []

  chooseSource (n: SimNode, b: number): number {
    const s = this.st[n.idx]
    if (s.parentIdx.length === 0) return -1
    const c = chooseSource({ blockIndex: b, sizeBytes: this.e.blockSizeBytes }, this.sources(n, b, this.scratch), this.sched)
    if (c === null) return -1
    this.lastExpectedMs = c.expectedMs
    return Number(c.peerId.slice(1))
  }

  onRequest (n: SimNode, _b: number, r: Req): void {
    const s = this.st[n.idx]
    const st = this.sourceState(n, r.src)
    st.queuedBytes += this.e.blockSizeBytes
    st.inFlight++
    if (r.hedged) return
    r.expectedMs = this.lastExpectedMs
    if (r.prefetch || s.parentIdx.length < 2) return // prefetch requests are not hedged (src/p2p/peer-source.ts)
    const deadline = hedgeDeadlineMs(r, this.sched)
    if (r.arrivalMs >= 0 && r.arrivalMs <= deadline) return // already on its way, in time: no hedge can be needed
    if (deadline < s.hedgeScanAtMs) {
      s.hedgeScanAtMs = deadline
      this.e.at(deadline, () => this.hedgeScan(n))
    }
  }

  /** Sends one hedge for every request of n past its deadline; one scan timer per agent. */
  private hedgeScan (n: SimNode): void {
    const s = this.st[n.idx]
    if (!n.alive || this.e.nowMs < s.hedgeScanAtMs) return // superseded by an earlier scan's reschedule
    s.hedgeScanAtMs = Infinity
    let next = Infinity
    for (const [b, r] of n.req) {
      if (r.hedged || r.prefetch || n.has[b] === 1) continue
      const deadline = hedgeDeadlineMs(r, this.sched)
      if (r.arrivalMs >= 0 && r.arrivalMs <= deadline) continue
      if (deadline > this.e.nowMs) { next = Math.min(next, deadline); continue }
      r.hedged = true
      const t = chooseHedgeTarget({ blockIndex: b, sizeBytes: this.e.blockSizeBytes }, this.sources(n, b, this.scratch), { ...r, peerId: `n${r.src}` }, this.sched)
      if (t !== null) this.e.sendRequest(n, b, Number(t.peerId.slice(1)), true)
    }
    if (next < Infinity) { s.hedgeScanAtMs = next; this.e.at(next, () => this.hedgeScan(n)) }
  }

  onArrive (n: SimNode, _b: number, src: number, r: Req): void {
    const st = this.st[n.idx].src.get(src)
    if (st === undefined) return
    st.queuedBytes = Math.max(0, st.queuedBytes - this.e.blockSizeBytes)
    st.inFlight = Math.max(0, st.inFlight - 1)
    const elapsedMs = this.e.nowMs - r.startedAtMs
    if (elapsedMs > 0) {
      const observed = this.e.blockSizeBytes / elapsedMs * 1000
      st.throughputBytesPerS = 0.8 * (st.throughputBytesPerS ?? observed) + 0.2 * observed
    }
  }

  onDeliver (n: SimNode): void {
    // a complete agent becomes a seed at once (the daemon re-advertises on the last block), not at its next heartbeat
    if (this.e.opts.promoteComplete === true && !n.isSeed && !n.promoted && n.held === this.e.blockCount) this.e.at(this.e.nowMs, () => { if (n.alive) this.tick(n) })
  }

  parentsOf (n: SimNode): readonly number[] { return this.st[n.idx]?.parentIdx ?? [] }
}

export type { Req }
