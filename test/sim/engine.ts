// The discrete-event engine shared by the three systems: simulated clock and event heap, hosts on the
// simulated network, each booting agent's VM replaying the boot trace with blocking reads and think time,
// block fetches with request coalescing and on-demand relaying (a parent that lacks a requested block
// fetches it first and serves it once it is verified: store-and-forward per block), failure injection,
// and the checkers. The systems (systems.ts) only decide where an agent's requests go and how the tree
// is built; vmthunderd's decisions come from the production src/topology code.

import { BlockMap } from './block-map.js'
import { EventHeap } from './heap.js'
import { Network } from './network.js'
import { Rng } from './rng.js'
import type { Scenario } from './scenario.js'
import type { Trace } from './trace.js'

export type SystemName = 'central' | 'volt' | 'vmthunderd'

export interface Req {
  src: number
  startedAtMs: number
  expectedMs: number
  hedged: boolean
  /** Sent for prefetch only (no demand read waits for it): not hedged, as in src/p2p/peer-source.ts. */
  prefetch: boolean
  /** Serial of this request, so that late timers can tell they are stale. */
  serial: number
  /** When the block will have arrived, if known when the request was sent (the source held it). */
  arrivalMs: number
  /**
   * The first block of its request: blocks asked of one peer at one moment travel as one request (a GET of up
   * to 16 blocks), which pays the per-request costs once (costs.ts).
   */
  firstOfRequest: boolean
  /** The system's own record for the request's source (vmthunderd: the scheduler's SourceState). */
  source: unknown
  /** The requester and the block (the request is its own serve and deliver event: no closure per block). */
  to: SimNode
  b: number
  /** When the block fully arrived at the requester (deliver checks that the sender was alive until then). */
  arrivedMs: number
  /** Which engine event this request is queued as (EV_SERVE, EV_DELIVER). */
  ev: number
}

export interface SimNode {
  idx: number
  id: string
  isSeed: boolean
  alive: boolean
  deathMs: number
  /** Boots a VM (seeds do not). */
  boots: boolean
  startMs: number
  doneMs: number
  readIdx: number
  has: Uint8Array
  held: number
  /**
   * Blocks being fetched → what waits for them (callbacks, a read of the VM, a relayed request): one waiter as
   * itself, more in an array (most blocks have one: no array allocated per pending block).
   */
  pending: BlockMap<Waiter | Waiter[]>
  /** Blocks being fetched → the request currently in flight for them. */
  req: BlockMap<Req>
  /** Blocks waiting for a source (detached agent). Change it only through the engine (it keeps the count). */
  stalled: Set<number>
  /** Pending blocks that only prefetch asked for (a demand need removes the block); same rule. */
  prefetchOnly: Set<number>
  /** stalled.size and prefetchOnly.size, kept here: a delivered block skips both sets when they are empty. */
  stalledCount: number
  prefetchOnlyCount: number
  children: Set<number>
  /** The VM waits for a read that missed (prefetch models must not issue transfers then). */
  demandWaiting: boolean
  /** The system promoted this agent to a seed once it held every block (issue 5): a root for the checkers. */
  promoted: boolean
  /**
   * Sources this agent sent requests to at requestsAtMs (grouping blocks into requests), requestedCount of
   * them: the first in requestedFirst (most moments have one: the array is not touched), the others from
   * requestedFrom[1].
   */
  requestsAtMs: number
  requestedFirst: number
  requestedFrom: number[]
  requestedCount: number
  /** The engine event a node is queued as: its VM's next read (EV_READ). */
  readonly ev: number
}

/** A VM read waiting for `missing` more blocks (one object per read that missed, instead of a closure each). */
interface ReadWait {
  /** Tells it from a relayed request (a Req waiting for its block at the relay, EV_SERVE). */
  readonly ev: typeof EV_READ
  n: SimNode
  blocks: readonly number[]
  missing: number
}

/** What waits for a block: a callback, a VM read, or a request a relay serves once the block is there. */
export type Waiter = (() => void) | ReadWait | Req

/** The engine's own events are objects (a Req, a SimNode) tagged with one of these, not closures. */
const EV_DELIVER = 1
const EV_SERVE = 2
const EV_READ = 3

/** Issue 5 hook: a prefetch model proposes blocks to fetch while the VM thinks (between reads). */
export interface PrefetchModel {
  /** Called when an agent's VM starts thinking before read `nextReadIdx`; returns dense block ids to fetch. */
  onThink: (agent: SimNode, nextReadIdx: number, thinkMs: number, sim: Engine) => readonly number[]
  /** A read reached the agent; `hit`: every block was present. */
  onRead?: (agent: SimNode, readIdx: number, hit: boolean, sim: Engine) => void
  /** The agent's VM finished the trace (idle prefetch may go on). */
  onBootDone?: (agent: SimNode, sim: Engine) => void
}

export interface System {
  readonly name: SystemName
  /** Children allowed per node (Infinity: no limit, central). */
  readonly fanoutLimit: number
  init: () => void
  onNodeAdded: (n: SimNode) => void
  onCrash: (n: SimNode) => void
  /** Where to request block b for node n now (-1: nowhere yet; the block is stalled until retryStalled). */
  chooseSource: (n: SimNode, b: number) => number
  /** Live parent edges of n (for checkers). */
  parentsOf: (n: SimNode) => readonly number[]
  /** After a request to src was issued. */
  onRequest?: (n: SimNode, b: number, r: Req) => void
  /** Every arrival of block b at n from src, duplicates included (for per-source accounting). */
  onArrive?: (n: SimNode, b: number, src: number, r: Req) => void
  /** After block b arrived at n from src for the first time. */
  onDeliver?: (n: SimNode, b: number, src: number, r: Req | undefined) => void
  /** Whether s fetches a block it lacks for requester `to` (a parent relays for its children); default yes. */
  relays?: (s: SimNode, to: SimNode) => boolean
  /**
   * Whether s answers busy to `to`'s request for block b (the daemon's block server: a seed serves peers that are
   * not its children within one shared budget). The answer comes back as a 'not present' would.
   */
  refuses?: (s: SimNode, to: SimNode, b: number) => boolean
  /** s answered 'not present' (or busy) to n's request r for block b (it does not relay for n). */
  onNotPresent?: (n: SimNode, b: number, src: number, r: Req) => void
  /** CPU work (ms of one core) at s to send block b to n (the cost model, costs.ts); none when absent. */
  sendCpuMs?: (s: SimNode, to: SimNode, b: number, r: Req) => number
  /** CPU work at n to take in block b from s (decrypt, verify, store). */
  recvCpuMs?: (n: SimNode, b: number, s: SimNode, r: Req) => number
  /** Wall time (not CPU) a request waits inside the agents beyond their CPU, added to its first block. */
  requestWaitMs?: (n: SimNode, b: number, s: SimNode, r: Req) => number
  /** CPU work at an agent before its VM's first read (instance creation: manifest, cache, export). */
  startCpuMs?: number
  /**
   * What every VM read costs at its agent, hit or miss (the NBD request, the cache lookup and the reply): CPU
   * on the host, and the wall time of a read served from the cache on an idle host (CPU included). Absent: reads
   * that hit complete at once.
   */
  readCost?: { cpuMs: number, wallMs: number }
  /** Bytes that move when s sends block b to n (default: the whole block). */
  transferBytes?: (s: SimNode, to: SimNode, b: number) => number
}

export interface CheckStats {
  checks: number
  cycleChecksFailed: number
  firstCycle: number[] | null
  fanoutViolations: number
  absentReads: number
  maxDepth: number
  maxFanout: number
  /** (timeMs, live agents that reach no seed) at each check. */
  unreachable: Array<[number, number]>
  depthHistogram: number[]
}

export interface EngineOptions {
  scenario: Scenario
  trace: Trace
  seed: number
  agents: number
  prefetch?: PrefetchModel
  /** Agents holding every block become seeds (vmthunderd: depth 0, no parents; issue 5). */
  promoteComplete?: boolean
  /** Checker period (ms). */
  checkIntervalMs?: number
  /** Called every simulated second, for progress reports (reads the engine, changes nothing). */
  progress?: (e: Engine) => void
}

type Payload = (() => void) | Req | SimNode

export class Engine {
  readonly heap = new EventHeap<Payload>()
  nowMs = 0
  readonly net: Network
  readonly nodes: SimNode[] = []
  readonly seeds: number[] = []
  /** Randomness of the scenario (hosts, victims, joins): identical for every system. */
  readonly scenarioRng: Rng
  /** Randomness of the system (RTT noise, heartbeat phases, candidate sampling). */
  readonly sysRng: Rng
  system!: System
  readonly blockSizeBytes: number
  readonly blockCount: number
  originEgressBytes = 0
  /** Origin egress per second of simulated time. */
  readonly originEgressPerS: number[] = []
  seedEgressBytes = 0
  wastedBytes = 0
  /** Block requests sent to agents that are not seeds (hedges included): the testbed counts these. */
  peerBlockRequests = 0
  /** Failure injections: time and the heal time found by the checker (-1 until healed). */
  readonly failures: Array<{ atMs: number, kind: string, healedAtMs: number }> = []
  readonly check: CheckStats = {
    checks: 0, cycleChecksFailed: 0, firstCycle: null, fanoutViolations: 0, absentReads: 0, maxDepth: 0, maxFanout: 0,
    unreachable: [], depthHistogram: []
  }

  /** Cumulative think time before each read (the trace's own schedule). */
  private readonly dueMs: Float64Array
  private reqSerial = 0
  /** Agents whose VM has not finished (or crashed) yet. */
  booting = 0
  private pendingScenarioEvents = 0
  private stopped = false
  readonly checkIntervalMs: number
  eventsRun = 0

  constructor (readonly opts: EngineOptions) {
    this.scenarioRng = new Rng(opts.seed ^ 0x5eed)
    this.sysRng = new Rng(opts.seed ^ 0x51a7)
    this.net = new Network(opts.scenario.profile, this.scenarioRng.fork(), opts.scenario.cpu)
    this.blockSizeBytes = opts.trace.blockSizeBytes
    this.blockCount = opts.trace.blockCount
    this.checkIntervalMs = opts.checkIntervalMs ?? 1000
    this.dueMs = new Float64Array(opts.trace.reads.length)
    let t = 0
    opts.trace.reads.forEach((r, i) => { t += r.thinkMs; this.dueMs[i] = t })
  }

  at (t: number, fn: () => void): void { this.heap.push(t < this.nowMs ? this.nowMs : t, fn) }

  /**
   * Presence of every block at every node in one buffer (node-major): systems that look at other nodes'
   * blocks (vmthunderd's scheduler) hit one cache line instead of chasing four pointers. Each node's `has`
   * is a view into it.
   */
  presence = new Uint8Array(0)
  /** When each node died (Infinity: alive), by index: the block path checks a sender without touching its object. */
  private deathAt = new Float64Array(0)
  /** 1 for seeds, by index: a request to a source and its transfer need not touch the source's object. */
  private seedAt = new Uint8Array(0)
  /** When each block arrived at each node (ms; Infinity: absent), same layout: adverts' summaries (summary.ts). */
  arrival = new Float32Array(0)

  private presenceFor (idx: number): Uint8Array {
    const need = (idx + 1) * this.blockCount
    if (need > this.presence.length) {
      const grown = new Uint8Array(Math.max(need, this.presence.length * 2))
      grown.set(this.presence)
      this.presence = grown
      const times = new Float32Array(grown.length).fill(Infinity)
      times.set(this.arrival)
      this.arrival = times
      for (const n of this.nodes) n.has = grown.subarray(n.idx * this.blockCount, (n.idx + 1) * this.blockCount)
    }
    if (idx >= this.deathAt.length) {
      const grown = new Float64Array(Math.max(idx + 1, 2 * this.deathAt.length)).fill(Infinity)
      grown.set(this.deathAt)
      this.deathAt = grown
      const seeds = new Uint8Array(grown.length); seeds.set(this.seedAt); this.seedAt = seeds
    }
    return this.presence.subarray(idx * this.blockCount, (idx + 1) * this.blockCount)
  }

  addNode (isSeed: boolean, boots: boolean, startMs: number): SimNode {
    const idx = this.net.addHost()
    const n: SimNode = {
      idx, id: `n${idx}`, isSeed, alive: true, deathMs: Infinity, boots, startMs, doneMs: -1, readIdx: 0,
      has: this.presenceFor(idx), held: 0, pending: new BlockMap(), req: new BlockMap(), stalled: new Set(), children: new Set(), prefetchOnly: new Set(),
      stalledCount: 0, prefetchOnlyCount: 0, demandWaiting: false, promoted: false, requestsAtMs: -1, requestedFirst: -1, requestedFrom: [-1], requestedCount: 0, ev: EV_READ
    }
    if (isSeed) { this.seedAt[idx] = 1; n.has.fill(1); n.held = this.blockCount; this.seeds.push(idx); this.arrival.fill(0, idx * this.blockCount, (idx + 1) * this.blockCount) }
    this.nodes.push(n)
    if (boots) {
      this.booting++
      this.at(startMs, () => {
        if (!n.alive) return
        // instance creation is CPU work on the agent's host before the first read (cost model)
        const cpu = this.system.startCpuMs ?? 0
        if (cpu > 0) this.at(this.net.cpu(idx, cpu, this.nowMs, this.nowMs), () => { if (n.alive) this.nextRead(n, true) })
        else this.nextRead(n, true)
      })
    }
    return n
  }

  /** Builds the cluster, runs to completion (or maxSimMs) and returns. */
  run (system: System): void {
    this.system = system
    const sc = this.opts.scenario
    let capacity = sc.seeds + this.opts.agents
    for (const ev of sc.events) {
      if (ev.kind === 'join') capacity += ev.count
      if (ev.kind === 'churn') capacity += Math.ceil((ev.toMs - ev.fromMs) * ev.perSecond / 1000) + 1
    }
    this.presence = new Uint8Array(capacity * this.blockCount)
    this.deathAt = new Float64Array(capacity).fill(Infinity)
    this.seedAt = new Uint8Array(capacity)
    this.arrival = new Float32Array(capacity * this.blockCount).fill(Infinity)
    for (let i = 0; i < sc.seeds; i++) this.addNode(true, false, 0)
    for (let i = 0; i < this.opts.agents; i++) this.addNode(false, true, sc.startSpreadMs > 0 ? this.scenarioRng.range(0, sc.startSpreadMs) : 0)
    system.init()
    for (const n of this.nodes) system.onNodeAdded(n)
    this.scheduleScenario()
    this.at(0, () => this.runCheck('periodic'))
    const progress = this.opts.progress
    if (progress !== undefined) {
      const tick = (): void => { progress(this); if (!this.stopped) this.at(this.nowMs + 1000, tick) }
      this.at(1000, tick)
    }
    const maxMs = sc.maxSimMs
    for (;;) {
      const e = this.heap.pop()
      if (e === undefined) break
      if (e.t > maxMs) { this.nowMs = maxMs; break }
      this.nowMs = e.t
      this.eventsRun++
      const f = e.fn
      if (typeof f === 'function') f()
      else if (f.ev === EV_DELIVER) this.deliver(f as Req)
      else if (f.ev === EV_SERVE) { const r = f as Req; this.serve(this.nodes[r.src], r.to, r.b, r) } else {
        const n = f as SimNode
        if (n.alive) this.doRead(n)
      }
      // done when every VM finished and, after failures, the systems had time to repair (volt: 30 s)
      if (this.booting === 0 && this.pendingScenarioEvents === 0 && this.nowMs >= this.lastFailureMs + SETTLE_AFTER_FAILURE_MS) break
    }
    this.stopped = true
    this.runCheck('once')
  }

  // ---- workload ----

  /** `fromMs`: when the previous read completed (later than now when a read cost was booked ahead). */
  private nextRead (n: SimNode, first = false, fromMs = this.nowMs): void {
    const reads = this.opts.trace.reads
    // Reads with no think time before them run here, one after another while they hit, instead of as an
    // event each: back to back that was a third of all events. With a prefetch model they stay events.
    // A read due later (the previous read's cost was booked ahead, it completes at fromMs) whose blocks are all
    // present now finds them then too (blocks are never dropped): it runs here as well, its own cost booked
    // ahead from fromMs, instead of as an event at fromMs (half of the read events back to back).
    for (;;) {
      if (!first) n.readIdx++
      first = false
      if (n.readIdx >= reads.length) {
        n.doneMs = fromMs
        this.booting--
        this.opts.prefetch?.onBootDone?.(n, this)
        return
      }
      const scale = this.opts.scenario.thinkTimeScale
      // 'absolute': each read is due at its trace time from the start (the benchmarks' replay: a late read eats
      // into the next think time); 'relative': the think time follows the previous read's completion
      const thinkMs = this.opts.scenario.thinkMode === 'absolute'
        ? Math.max(0, n.startMs + this.dueMs[n.readIdx] * scale - fromMs)
        : reads[n.readIdx].thinkMs * scale
      if (this.opts.prefetch !== undefined) {
        for (const b of this.opts.prefetch.onThink(n, n.readIdx, thinkMs, this)) if (b >= 0 && b < this.blockCount) this.need(n, b, noop)
      }
      if (thinkMs > 0 || this.opts.prefetch !== undefined) { this.heap.push(Math.max(this.nowMs, fromMs + thinkMs), n); return }
      if (fromMs > this.nowMs) {
        const cost = this.system.readCost
        const blocks = reads[n.readIdx].blocks
        if (cost === undefined || !this.allPresent(n, blocks)) { this.heap.push(fromMs, n); return }
        const doneAtMs = Math.max(this.net.cpu(n.idx, cost.cpuMs, fromMs, this.nowMs), fromMs + cost.wallMs)
        if (!this.readDone(n, blocks)) return
        fromMs = doneAtMs
        continue
      }
      if (!this.startRead(n)) return
    }
  }

  private allPresent (n: SimNode, blocks: readonly number[]): boolean {
    const has = this.presence
    const base = n.idx * this.blockCount
    for (const b of blocks) if (has[base + b] !== 1) return false
    return true
  }

  private doRead (n: SimNode): void {
    if (this.startRead(n)) this.nextRead(n)
  }

  /** Starts the current read of n; true when every block was present (the read is done, the next is due). */
  private startRead (n: SimNode): boolean {
    const blocks = this.opts.trace.reads[n.readIdx].blocks
    const has = this.presence
    const base = n.idx * this.blockCount
    let missing = 0
    for (const b of blocks) if (has[base + b] !== 1) missing++
    this.opts.prefetch?.onRead?.(n, n.readIdx, missing === 0, this)
    const cost = this.system.readCost
    if (missing === 0) {
      if (cost === undefined) return this.readDone(n, blocks)
      this.afterReadCost(n, blocks, cost)
      return false
    }
    n.demandWaiting = true
    const wait: ReadWait = { ev: EV_READ, n, blocks, missing }
    for (const b of blocks) if (has[base + b] !== 1) this.need(n, b, wait)
    return false
  }

  /** One of the blocks a read waits for is present. */
  private readBlockArrived (w: ReadWait): void {
    if (--w.missing !== 0) return
    const cost = this.system.readCost
    if (cost !== undefined) this.afterReadCost(w.n, w.blocks, cost)
    else if (this.readDone(w.n, w.blocks)) this.nextRead(w.n)
  }

  private wake (w: Waiter): void {
    if (typeof w === 'function') w()
    else if (w.ev === EV_READ) this.readBlockArrived(w as ReadWait)
    else { const r = w as Req; this.serve(this.nodes[r.src], r.to, r.b, r) } // a relay serves the request it held
  }

  /**
   * The read's own cost at its agent once its blocks are there: CPU on the host, at least `wallMs` in all. The
   * read completes then; its blocks are present now and stay so, so the next read is scheduled from that time
   * at once (one event per read, not two).
   */
  private afterReadCost (n: SimNode, blocks: readonly number[], cost: { cpuMs: number, wallMs: number }): void {
    const doneAtMs = Math.max(this.net.cpu(n.idx, cost.cpuMs, this.nowMs, this.nowMs), this.nowMs + cost.wallMs)
    if (this.readDone(n, blocks)) this.nextRead(n, false, doneAtMs)
  }

  /** The read of `blocks` completed; true when the VM goes on to its next read. */
  private readDone (n: SimNode, blocks: readonly number[]): boolean {
    n.demandWaiting = false
    if (!n.alive) return false
    // checker: a read completes only from blocks present (fetched and verified) at this agent
    const has = this.presence
    const base = n.idx * this.blockCount
    for (const b of blocks) if (has[base + b] !== 1) this.check.absentReads++
    return true
  }

  // ---- blocks ----

  /** Calls cb once block b is present at n (at once if it is). `prefetch`: no demand read waits for it. */
  need (n: SimNode, b: number, cb: Waiter, prefetch = false): void {
    if (this.presence[n.idx * this.blockCount + b] === 1) { this.wake(cb); return }
    const waiting = n.pending.get(b)
    if (waiting !== undefined) {
      // set of a present key keeps its place in the iteration order
      if (Array.isArray(waiting)) waiting.push(cb); else n.pending.set(b, [waiting, cb])
      if (!prefetch && n.prefetchOnlyCount !== 0 && n.prefetchOnly.delete(b)) n.prefetchOnlyCount--
      return
    }
    n.pending.set(b, cb)
    if (prefetch && !n.prefetchOnly.has(b)) { n.prefetchOnly.add(b); n.prefetchOnlyCount++ }
    this.issue(n, b)
  }

  /** Sends (or re-sends) the request for pending block b of n to the system's choice of source. */
  issue (n: SimNode, b: number, hedge = false): void {
    if (!n.alive || this.presence[n.idx * this.blockCount + b] === 1 || !n.pending.has(b)) return
    const src = this.system.chooseSource(n, b)
    if (src < 0) { if (!n.stalled.has(b)) { n.stalled.add(b); n.stalledCount++ } return }
    if (n.stalledCount !== 0 && n.stalled.delete(b)) n.stalledCount--
    this.sendRequest(n, b, src, hedge)
  }

  sendRequest (n: SimNode, b: number, src: number, hedge: boolean, expectedMs = 0): Req {
    if (n.requestsAtMs !== this.nowMs) { n.requestsAtMs = this.nowMs; n.requestedCount = 0 }
    const count = n.requestedCount
    let firstOfRequest = true
    if (count !== 0) {
      if (n.requestedFirst === src) firstOfRequest = false
      else { const from = n.requestedFrom; for (let i = 1; i < count; i++) if (from[i] === src) { firstOfRequest = false; break } }
    }
    if (firstOfRequest) {
      if (count === 0) n.requestedFirst = src; else n.requestedFrom[count] = src
      n.requestedCount = count + 1
    }
    const r: Req = {
      src, startedAtMs: this.nowMs, expectedMs, hedged: hedge, prefetch: n.prefetchOnlyCount !== 0 && n.prefetchOnly.has(b), serial: ++this.reqSerial,
      arrivalMs: -1, firstOfRequest, source: undefined, to: n, b, arrivedMs: 0, ev: EV_SERVE
    }
    if (!hedge) n.req.set(b, r)
    const s = this.nodes[src]
    if (this.seedAt[src] === 0) this.peerBlockRequests++
    const reachMs = this.nowMs + this.net.latencyMs(n.idx, src)
    // The source holds the block: queue the transfer now, ready when the request reaches it (saves an
    // event per block). Otherwise the request is handled when it arrives (relay, or lost if s is dead).
    // A busy answer (refuses) is decided at issue too: the budget is the source's, and nothing else is queued.
    if (this.deathAt[src] === Infinity && this.system.refuses?.(s, n, b) === true) {
      this.at(reachMs + this.net.latencyMs(src, n.idx), () => { if (n.alive) this.system.onNotPresent?.(n, b, src, r) })
    } else if (this.deathAt[src] === Infinity && this.presence[src * this.blockCount + b] === 1) this.transmit(s, src, n, b, r, reachMs)
    else this.heap.push(Math.max(this.nowMs, reachMs), r) // r.ev: EV_SERVE
    this.system.onRequest?.(n, b, r)
    return r
  }

  /** Re-issues every stalled block of n (after it got a parent). */
  retryStalled (n: SimNode): void {
    if (n.stalledCount === 0) return
    const blocks = [...n.stalled]
    n.stalled.clear()
    n.stalledCount = 0
    for (const b of blocks) this.issue(n, b)
  }

  private serve (s: SimNode, to: SimNode, b: number, r: Req): void {
    if (!s.alive) return // lost: the requester finds out by timeout, failure detection or its master
    if (this.presence[s.idx * this.blockCount + b] !== 1) {
      if (this.system.relays !== undefined && !this.system.relays(s, to)) {
        // 'not present': the answer reaches the requester one latency later
        this.at(this.nowMs + this.net.latencyMs(s.idx, to.idx), () => { if (to.alive) this.system.onNotPresent?.(to, b, s.idx, r) })
        return
      }
      // relay: fetch it first (coalesced with any fetch already under way), then serve (wake: r waits as itself)
      this.need(s, b, r, r.prefetch)
      return
    }
    this.transmit(s, s.idx, to, b, r, this.nowMs)
  }

  /** `src`: s.idx (the caller has it; reading it from s is a cache miss at 10,000 agents). */
  private transmit (s: SimNode, src: number, to: SimNode, b: number, r: Req, readyMs: number): void {
    const size = this.system.transferBytes?.(s, to, b) ?? this.blockSizeBytes
    const sendCpu = this.system.sendCpuMs?.(s, to, b, r) ?? 0
    if (sendCpu > 0) readyMs = this.net.cpu(src, sendCpu, readyMs, this.nowMs)
    let arrival = this.net.transfer(src, to.idx, size, readyMs) + (this.system.requestWaitMs?.(to, b, s, r) ?? 0)
    const recvCpu = this.system.recvCpuMs?.(to, b, s, r) ?? 0
    r.arrivalMs = arrival
    if (this.seedAt[src] === 1) {
      this.seedEgressBytes += size
      if (src === this.seeds[0]) {
        this.originEgressBytes += size
        const sec = Math.floor(readyMs / 1000)
        while (this.originEgressPerS.length <= sec) this.originEgressPerS.push(0)
        this.originEgressPerS[sec] += size
      }
    }
    // the receiver's CPU work is booked now for when the block arrives; the CPU's calendar (cpu-queue.ts)
    // lets work that is ready earlier use the time before it, so nothing idles behind work not there yet
    r.arrivedMs = arrival
    if (recvCpu > 0) arrival = this.net.cpu(to.idx, recvCpu, arrival, this.nowMs)
    r.ev = EV_DELIVER
    this.heap.push(Math.max(this.nowMs, arrival), r)
  }

  /** Block r.b from r.src is present at r.to (it arrived at r.arrivedMs, then the receiver's CPU took it in). */
  private deliver (r: Req): void {
    const n = r.to
    if (!n.alive) return
    const b = r.b
    const src = r.src
    this.system.onArrive?.(n, b, src, r)
    // sender died mid-transfer (deathAt: Infinity while alive)
    if (this.deathAt[src] < r.arrivedMs - this.net.latencyMs(src, n.idx)) return
    const i = n.idx * this.blockCount + b
    if (this.presence[i] === 1) { this.wastedBytes += this.blockSizeBytes; return }
    this.presence[i] = 1
    this.arrival[i] = this.nowMs
    n.held++
    const cur = n.req.take(b)
    if (n.stalledCount !== 0 && n.stalled.delete(b)) n.stalledCount--
    if (n.prefetchOnlyCount !== 0 && n.prefetchOnly.delete(b)) n.prefetchOnlyCount--
    this.system.onDeliver?.(n, b, src, cur?.serial === r.serial ? cur : r)
    const waiting = n.pending.take(b)
    if (waiting !== undefined) {
      if (Array.isArray(waiting)) { for (const cb of waiting) this.wake(cb) } else this.wake(waiting)
    }
  }

  // ---- failures and joins ----

  crash (n: SimNode): void {
    if (!n.alive) return
    n.alive = false
    n.deathMs = this.nowMs
    this.deathAt[n.idx] = this.nowMs
    if (n.boots && n.doneMs < 0) this.booting--
    n.pending.clear()
    n.req.clear()
    n.stalled.clear()
    n.prefetchOnly.clear()
    n.stalledCount = 0
    n.prefetchOnlyCount = 0
    this.system.onCrash(n)
  }

  private liveBooting (): SimNode[] { return this.nodes.filter(n => n.alive && n.boots) }

  private scheduleScenario (): void {
    const sc = this.opts.scenario
    const injectFailure = (kind: string): void => {
      this.failures.push({ atMs: this.nowMs, kind, healedAtMs: -1 })
      this.lastFailureMs = this.nowMs
      const healing = this.healChainRunning
      this.runCheck('once')
      if (!healing && this.failures.some(f => f.healedAtMs < 0)) { this.healChainRunning = true; this.at(this.nowMs + 100, () => this.runCheck('heal')) }
    }
    for (const ev of sc.events) {
      if (ev.kind === 'churn') {
        const stepMs = 1000 / ev.perSecond
        for (let t = ev.fromMs; t < ev.toMs; t += stepMs) {
          this.pendingScenarioEvents++
          this.at(t, () => {
            this.pendingScenarioEvents--
            const live = this.liveBooting()
            if (live.length > 0) this.crash(this.scenarioRng.pick(live))
            this.system.onNodeAdded(this.addNode(false, true, this.nowMs))
            injectFailure('churn')
          })
        }
        continue
      }
      this.pendingScenarioEvents++
      this.at(ev.atMs, () => {
        this.pendingScenarioEvents--
        if (ev.kind === 'crash') {
          const live = this.liveBooting()
          const count = ev.count ?? Math.round((ev.fraction ?? 0) * live.length)
          for (const n of this.scenarioRng.shuffle(live).slice(0, count)) this.crash(n)
          injectFailure(`crash ${count}`)
        } else if (ev.kind === 'crashRacks') {
          const seedRacks = new Set(this.seeds.map(s => this.net.hosts[s].rack))
          const racks = [...new Set(this.nodes.filter(n => n.alive).map(n => this.net.hosts[n.idx].rack))].filter(r => !seedRacks.has(r)).sort((a, b) => a - b)
          const victims = new Set(this.scenarioRng.shuffle(racks).slice(0, ev.racks))
          for (const n of this.nodes) if (n.alive && !n.isSeed && victims.has(this.net.hosts[n.idx].rack)) this.crash(n)
          injectFailure(`crash ${victims.size} racks`)
        } else if (ev.kind === 'crashOrigin') {
          this.crash(this.nodes[this.seeds[0]])
          injectFailure('crash origin')
        } else if (ev.kind === 'join') {
          for (let i = 0; i < ev.count; i++) this.system.onNodeAdded(this.addNode(false, true, this.nowMs))
        }
      })
    }
  }

  // ---- checkers ----

  private healChainRunning = false
  private lastFailureMs = -Infinity

  /** Runs the checkers now; 'periodic' schedules the next run, 'heal' re-runs every 100 ms until healed. */
  runCheck (mode: 'periodic' | 'once' | 'heal'): void {
    const c = this.check
    c.checks++
    const nodes = this.nodes
    const N = nodes.length
    const limit = this.system.fanoutLimit
    // parent lists of live nodes, live parents only
    const parents: Array<readonly number[]> = new Array(N)
    const fan = new Int32Array(N)
    for (let i = 0; i < N; i++) {
      const n = nodes[i]
      if (!n.alive) { parents[i] = []; continue }
      const ps = this.system.parentsOf(n).filter(p => nodes[p].alive)
      parents[i] = ps
      for (const p of ps) fan[p]++
    }
    for (let i = 0; i < N; i++) {
      if (!nodes[i].alive) continue
      if (fan[i] > c.maxFanout) c.maxFanout = fan[i]
      if (fan[i] > limit) c.fanoutViolations++
    }
    // cycles (iterative DFS, colours) and depth = 1 + min parent depth (seeds 0), unreachable = no depth
    const colour = new Uint8Array(N)
    for (let s = 0; s < N; s++) {
      if (colour[s] !== 0 || !nodes[s].alive) continue
      const stack: number[] = [s]; const pos: number[] = [0]
      colour[s] = 1
      while (stack.length > 0) {
        const top = stack[stack.length - 1]
        const ps = parents[top]
        const i = pos[pos.length - 1]
        if (i >= ps.length) { colour[top] = 2; stack.pop(); pos.pop(); continue }
        pos[pos.length - 1]++
        const p = ps[i]
        if (colour[p] === 1) {
          c.cycleChecksFailed++
          if (c.firstCycle === null) c.firstCycle = [...stack.slice(stack.indexOf(p)), p]
          continue
        }
        if (colour[p] === 0) { colour[p] = 1; stack.push(p); pos.push(0) }
      }
    }
    // depth by BFS from live seeds over child edges
    const depth = new Int32Array(N).fill(-1)
    const childrenOf: number[][] = Array.from({ length: N }, () => [])
    for (let i = 0; i < N; i++) for (const p of parents[i]) childrenOf[p].push(i)
    let frontier = this.seeds.filter(s => nodes[s].alive)
    for (let i = 0; i < N; i++) if (nodes[i].promoted && nodes[i].alive) frontier.push(i)
    for (const s of frontier) depth[s] = 0
    let d = 0
    while (frontier.length > 0) {
      const next: number[] = []
      for (const x of frontier) for (const ch of childrenOf[x]) if (depth[ch] < 0) { depth[ch] = d + 1; next.push(ch) }
      frontier = next
      d++
    }
    let unreachable = 0
    const hist: number[] = []
    for (let i = 0; i < N; i++) {
      const n = nodes[i]
      if (!n.alive || n.isSeed) continue
      if (n.boots && n.startMs > this.nowMs) continue
      if (depth[i] < 0) { unreachable++; continue }
      if (depth[i] > c.maxDepth) c.maxDepth = depth[i]
      hist[depth[i]] = (hist[depth[i]] ?? 0) + 1
    }
    c.unreachable.push([this.nowMs, unreachable])
    c.depthHistogram = Array.from(hist, x => x ?? 0)
    for (const f of this.failures) if (f.healedAtMs < 0 && unreachable === 0) f.healedAtMs = this.nowMs
    if (this.stopped) return
    if (mode === 'periodic') this.at(this.nowMs + this.checkIntervalMs, () => this.runCheck('periodic'))
    if (mode === 'heal') {
      if (this.failures.some(f => f.healedAtMs < 0)) this.at(this.nowMs + 100, () => this.runCheck('heal'))
      else this.healChainRunning = false
    }
  }
}

function noop (): void {}

/** After the last failure, run at least this long so that slow repairs (volt's 30 s detection) show. */
const SETTLE_AFTER_FAILURE_MS = 35_000
