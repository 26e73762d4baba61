// The BlockSource of an agent that is not the origin: blocks from its parents, striped, hedged, failed over.
//
// Each requested block becomes a job. A job is placed on the peer with the lowest expected completion time
// (src/topology/scheduler.ts: RTT + (bytes queued there + the block) / measured throughput) among the current
// parents that probably hold it (their advert's summary); when no parent holds it, among any peer that
// advertises it (seeds included). Each peer has a priority queue (demand before prefetch) drained into GET
// requests on the peer's link while that peer's in-flight bytes are under a bound. A demand request that has
// not completed by its hedge deadline (hedgeFactor x expected time, at least hedgeMinMs) is sent once more to
// the next best peer; the first answer wins. A failed request (link error, timeout, busy) or a 'not present'
// answer moves the job at once to the next peer; the peer is reported failed so the parent is replaced.
// A request whose every block was settled elsewhere (the loser of a hedge) is cancelled at once (CANCEL
// frame), so the slower peer stops spending upload on it.
// reportCorrupt (from the cache, which verifies every block) bans the sender through the directory.
//
// This is the one layer that retries a block (the cache above retries only corrupt data, see cache.ts
// fetchBatch). A peer that failed a job is not asked for it again until something about that peer changed
// that could make it answer: it reconnected (a restarted seed), its advert claims the block more strongly
// (the summary's levels only rise as it fetches: at most three times), it became our parent, or it is our
// parent (it relays) and sent a new advert; a busy peer, at the image's next source change. With nobody left
// to ask, the job waits for the image's next source change (an advert, a parent, a connection) and tries the
// peers that changed, so a read proceeds as soon as a holder of its block is back, and an outage costs a
// bounded number of requests however many adverts arrive meanwhile. Bounds: the caller's signal,
// noSourceWaitMs of waiting in all per job (on the injected clock), and maxAssignments requests per job.

import { setMaxListeners } from 'node:events'
import type { Manifest } from '../blockstack/manifest.js'
import { blockLength } from '../blockstack/manifest.js'
import type { BlockSource, FetchedBlock, FetchOptions, FetchPriority } from '../blockstack/types.js'
import {
  DEFAULT_SCHEDULER_PARAMS, chooseSource, hedgeDeadlineMs, type SchedulerParams, type SourceState
} from '../topology/scheduler.js'
import { NoPeerForBlockError, PeerTimeoutError, PeerTriesExhaustedError, RequestSupersededError } from './errors.js'
import type { PeerLink } from './peer-link.js'
import { PRIORITY_DEMAND, PRIORITY_PREFETCH, MAX_INDEXES_PER_GET } from './wire.js'
import type { TokenBucket } from './rate-limit.js'
import { systemClock, type Clock } from './clock.js'
import { LastResortBudget } from './last-resort-budget.js'
import type { Logger } from '../blockstack/cache.js'

export const DEFAULT_MAX_INFLIGHT_BYTES_PER_PEER = 16 * 1024 * 1024
export const DEFAULT_MAX_PREFETCH_INFLIGHT_BYTES_PER_PEER = 8 * 1024 * 1024
export const DEFAULT_MAX_REQUEST_BYTES = 1024 * 1024
/**
 * A peer asked only as a last resort (its child slots are full: typically the origin while we attach) gets
 * at most this much in flight from us: a VM's first reads are served at once, a bulk reader cannot drain it.
 */
export const DEFAULT_MAX_LAST_RESORT_INFLIGHT_BYTES_PER_PEER = 256 * 1024
/** A request that has not completed in this time fails (and its peer is reported failed). */
export const DEFAULT_REQUEST_TIMEOUT_MS = 15_000
/**
 * A job placed this many times without success fails. A peer is asked again only after it changed (see the
 * top), so this is a backstop against peers that keep claiming a block they do not serve, not the pace of
 * retries: with every failure re-asked at each advert (the old policy, 8 tries), an outage of the only seed
 * burned a job's tries within a second.
 */
export const DEFAULT_MAX_ASSIGNMENTS = 32
/** A job waits at most this long in all for a peer to ask (the cache then starts a fresh one). */
export const DEFAULT_NO_SOURCE_WAIT_MS = 10_000

/** One possible source of an image's blocks. */
export interface SourceInfo {
  peerId: string
  isParent: boolean
  /** Probability, from its advert's summary, that the peer holds the block (1 for a seed). */
  holdProbability: (blockIndex: number) => number
  /**
   * Asked only when no parent and no other peer can serve the block (bounded fan-out): its child slots are all
   * taken, or it is a seed that is not our parent (a seed's upload is for its children).
   */
  full: boolean
  /**
   * Changes whenever we (re)connect to the peer (a restarted seed comes back with a new epoch): what it
   * failed over an earlier connection is asked of it again. Absent: never changes.
   */
  connectionEpoch?: number
  /** The sequence number of the peer's current advert (it changes with each advert). Absent: never changes. */
  advertSeq?: number
}

/** What the peer source needs from the service: who can serve an image, links, and where to report. */
export interface PeerDirectory {
  sources: (manifest: Manifest) => SourceInfo[]
  /** True while the agent has no parent for the image and its short attach grace runs (see pickSource). */
  attaching: (manifest: Manifest) => boolean
  /**
   * True when a peer in the tree has a child slot free for us (not refused lately): a parent is about a
   * heartbeat away, so last-resort reads are held to their budget. False when nobody could take us (the
   * origin admits no child and no relay has room): the last resort is then the only way, and is not budgeted.
   */
  canAttach: (manifest: Manifest) => boolean
  link: (peerId: string) => PeerLink
  isBanned: (peerId: string) => boolean
  /** A request to this peer failed (stream error, timeout): the parent is replaced at the next heartbeat. */
  reportFailed: (manifest: Manifest, peerId: string, err: Error) => void
  /** The cache found a corrupt block from this peer. */
  reportCorrupt: (manifest: Manifest, peerId: string) => void
  onReceived: (manifest: Manifest, peerId: string, bytes: number) => void
  /** Resolves when the image's sources may have changed (new advert, parent, connection), or rejects on abort. */
  waitForSources: (manifest: Manifest, signal: AbortSignal) => Promise<void>
}

export interface PeerSourceInit {
  directory: PeerDirectory
  downloadBucket?: TokenBucket
  scheduler?: Partial<SchedulerParams>
  maxInflightBytesPerPeer?: number
  maxPrefetchInflightBytesPerPeer?: number
  maxLastResortInflightBytesPerPeer?: number
  maxRequestBytes?: number
  requestTimeoutMs?: number
  maxAssignments?: number
  noSourceWaitMs?: number
  /** Bounds what is taken from last-resort peers (default: a 1 MiB burst, then 64 KiB/s). */
  lastResortBudget?: LastResortBudget
  clock?: Clock
  /** A demand block that took over SLOW_BLOCK_LOG_MS is logged with what was tried (operators, churn runs). */
  logger?: Logger
}

/** A summary level at or above which a peer probably holds a block (advert.ts: 0.75 'most', 1 'all'). */
const PROBABLE_HOLD = 0.75
/** A demand block slower than this is logged (info) with its history. */
export const SLOW_BLOCK_LOG_MS = 1000
/** Events kept per job for that log (the first ones: the start of a stall tells most). */
const MAX_JOB_EVENTS = 12

/** What a peer looked like to a job when the job was placed there: it is asked again only once that changed. */
interface Attempt {
  connectionEpoch: number | undefined
  advertSeq: number | undefined
  holdProbability: number
  isParent: boolean
  /** It refused as busy: asked again at the image's next source change. */
  busy: boolean
}

interface Job {
  manifest: Manifest
  index: number
  bytes: number
  priority: FetchPriority
  /** Peers this job was sent to (or that failed it), as they were then. */
  tried: Map<string, Attempt>
  /** Peers it is queued at or in flight to, as they were when it was placed there. */
  placed: Map<string, Attempt>
  /** Peers it is queued at or in flight to. */
  active: Set<string>
  assignments: number
  hedged: boolean
  done: boolean
  /** Waiting for the image's sources to change (waitAndAssign runs). */
  waiting: boolean
  /** Time spent waiting so far (ms, on the injected clock): bounded by noSourceWaitMs. */
  waitedMs: number
  /** Only a last-resort peer could serve it and the budget was spent: wait at most this long for a refill. */
  budgetWaitMs: number
  /** Requests in flight that ask for this job's block. */
  requests: Set<InflightRequest>
  /** When the job began (clock ms), and what happened to it since (bounded): for the slow-block log. */
  startedAtMs: number
  events: string[]
  signal: AbortSignal
  onBlock?: (block: FetchedBlock) => void
  resolve: (block: FetchedBlock) => void
  reject: (err: Error) => void
}

interface InflightRequest {
  /** Jobs of the request not settled yet, by block index. */
  pending: Map<number, Job>
  controller: AbortController
}

interface PeerQueue {
  peerId: string
  demand: Job[]
  prefetch: Job[]
  queuedBytes: number
  inflightBytes: number
  inflightRequests: number
  dispatching: boolean
  /** A dispatch is queued as a microtask (see enqueue). */
  dispatchQueued: boolean
  /** The last job placed here came from the last-resort group (bounded in flight). */
  lastResort: boolean
}

export interface PeerSourceStats {
  requests: number
  hedges: number
  /** Requests cancelled because every block arrived from another peer first. */
  cancelled: number
  failovers: number
  duplicateBlocks: number
  /** Jobs that found nobody to ask and waited for the image's sources to change. */
  waits: number
  /** Waiting jobs placed again after a source change (a peer came back, claimed the block, became a parent). */
  wakeups: number
  /** Bytes asked of peers only as a last resort (full peers: typically the origin while we attach). */
  lastResortBytes: number
}

export class PeerSource implements BlockSource {
  private readonly directory: PeerDirectory
  private readonly params: SchedulerParams
  private readonly queues = new Map<string, PeerQueue>()
  private readonly maxInflight: number
  private readonly maxPrefetchInflight: number
  private readonly maxLastResortInflight: number
  private readonly maxRequestBytes: number
  private readonly requestTimeoutMs: number
  private readonly maxAssignments: number
  private readonly noSourceWaitMs: number
  private readonly clock: Clock
  private readonly lastResortBudget: LastResortBudget
  private readonly stopController = new AbortController()
  readonly stats: PeerSourceStats = { requests: 0, hedges: 0, cancelled: 0, failovers: 0, duplicateBlocks: 0, waits: 0, wakeups: 0, lastResortBytes: 0 }

  constructor (private readonly init: PeerSourceInit) {
    this.directory = init.directory
    this.params = { ...DEFAULT_SCHEDULER_PARAMS, ...init.scheduler }
    this.maxInflight = init.maxInflightBytesPerPeer ?? DEFAULT_MAX_INFLIGHT_BYTES_PER_PEER
    this.maxPrefetchInflight = init.maxPrefetchInflightBytesPerPeer ?? DEFAULT_MAX_PREFETCH_INFLIGHT_BYTES_PER_PEER
    this.maxLastResortInflight = init.maxLastResortInflightBytesPerPeer ?? DEFAULT_MAX_LAST_RESORT_INFLIGHT_BYTES_PER_PEER
    this.maxRequestBytes = init.maxRequestBytes ?? DEFAULT_MAX_REQUEST_BYTES
    this.requestTimeoutMs = init.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS
    this.maxAssignments = init.maxAssignments ?? DEFAULT_MAX_ASSIGNMENTS
    this.noSourceWaitMs = init.noSourceWaitMs ?? DEFAULT_NO_SOURCE_WAIT_MS
    this.clock = init.clock ?? systemClock
    this.lastResortBudget = init.lastResortBudget ?? new LastResortBudget(undefined, undefined, this.clock)
    // Every fetch in flight listens on it (bounded by the cache's fetch concurrency).
    setMaxListeners(Infinity, this.stopController.signal)
  }

  async fetch (manifest: Manifest, blockIndexes: readonly number[], options: FetchOptions): Promise<FetchedBlock[]> {
    const signal = AbortSignal.any([options.signal, this.stopController.signal])
    signal.throwIfAborted()
    // Many jobs wait on this one signal (bounded by the blocks of one fetch).
    setMaxListeners(MAX_INDEXES_PER_GET * 4, signal)
    const priority = options.priority ?? 'demand'
    const jobs: Job[] = []
    const promises = blockIndexes.map(async index => {
      const { promise, resolve, reject } = Promise.withResolvers<FetchedBlock>()
      const job: Job = {
        manifest, index, bytes: blockLength(manifest, index), priority, tried: new Map(), placed: new Map(), active: new Set(), assignments: 0,
        hedged: false, done: false, waiting: false, waitedMs: 0, budgetWaitMs: 0, requests: new Set(), startedAtMs: this.clock.nowMs(), events: [],
        signal, onBlock: options.onBlock, resolve, reject
      }
      jobs.push(job)
      return await promise
    })
    const onAbort = (): void => { for (const job of jobs) this.fail(job, signal.reason as Error) }
    signal.addEventListener('abort', onAbort, { once: true })
    for (const job of jobs) this.assign(job)
    const settled = await Promise.allSettled(promises)
    signal.removeEventListener('abort', onAbort)
    const blocks: FetchedBlock[] = []
    let firstError: Error | undefined
    for (const result of settled) {
      if (result.status === 'fulfilled') blocks.push(result.value)
      else firstError ??= result.reason as Error
    }
    // Partial success returns what arrived: the cache asks again for the rest.
    if (blocks.length === 0 && firstError !== undefined) throw firstError
    return blocks
  }

  reportCorrupt (manifest: Manifest, _blockIndex: number, peer: string | undefined): void {
    if (peer === undefined) return
    this.directory.reportCorrupt(manifest, peer)
    // Jobs waiting on the banned peer move elsewhere now.
    const queue = this.queues.get(peer)
    if (queue === undefined) return
    for (const job of [...queue.demand, ...queue.prefetch]) {
      this.markFailed(job, peer, false)
      this.assign(job)
    }
    queue.demand = []
    queue.prefetch = []
    queue.queuedBytes = 0
  }

  /** Fails every pending job (the service stops). */
  stop (): void {
    this.stopController.abort(new Error('peer source stopped'))
  }

  /** Per peer: queued and in-flight bytes (status, tests). */
  queueStats (): Record<string, { queuedBytes: number, inflightBytes: number, inflightRequests: number }> {
    const out: Record<string, { queuedBytes: number, inflightBytes: number, inflightRequests: number }> = {}
    for (const [peer, q] of this.queues) out[peer] = { queuedBytes: q.queuedBytes, inflightBytes: q.inflightBytes, inflightRequests: q.inflightRequests }
    return out
  }

  private queue (peerId: string): PeerQueue {
    let queue = this.queues.get(peerId)
    if (queue === undefined) {
      queue = { peerId, demand: [], prefetch: [], queuedBytes: 0, inflightBytes: 0, inflightRequests: 0, dispatching: false, dispatchQueued: false, lastResort: false }
      this.queues.set(peerId, queue)
    }
    return queue
  }

  private sourceStates (job: Job, infos: SourceInfo[]): SourceState[] {
    return infos.map(info => {
      const queue = this.queues.get(info.peerId)
      const link = this.directory.link(info.peerId)
      return {
        peerId: info.peerId,
        holds: info.holdProbability(job.index) >= 0.75,
        queuedBytes: (queue?.queuedBytes ?? 0) + (queue?.inflightBytes ?? 0),
        throughputBytesPerS: link.throughputBytesPerS,
        rttMs: link.rttMs,
        inFlight: queue?.inflightRequests ?? 0,
        failed: false
      }
    })
  }

  /** Picks a peer for a hedge: never one the job is at or was at. */
  private pickHedge (job: Job, slowPeer: string): { peerId: string, info: SourceInfo } | null {
    return this.pickSource(job, new Set([...job.tried.keys(), slowPeer]), true)
  }

  /**
   * May the job be placed on this peer? Not while it is there already; a peer that failed it only once it
   * changed in a way that could make it answer (see the top of the file).
   */
  private askable (job: Job, info: SourceInfo): boolean {
    if (job.active.has(info.peerId)) return false
    const last = job.tried.get(info.peerId)
    if (last === undefined) return true
    if (info.connectionEpoch !== last.connectionEpoch) return true
    // A parent relays what it lacks, holding our request until its own parents deliver (bounded by the relay
    // timeout): one that answered 'not present' is asked again once it sends a new advert (its situation
    // changed), so a long outage costs one request per parent advert, not one per advert of the image.
    if (info.isParent && (!last.isParent || info.advertSeq !== last.advertSeq)) return true
    return info.holdProbability(job.index) > last.holdProbability
  }

  private attemptOf (job: Job, info: SourceInfo): Attempt {
    return {
      connectionEpoch: info.connectionEpoch,
      advertSeq: info.advertSeq,
      holdProbability: info.holdProbability(job.index),
      isParent: info.isParent,
      busy: false
    }
  }

  /** The job failed at this peer (not present, link error, timeout, busy): remember the peer as it was then. */
  private markFailed (job: Job, peer: string, busy: boolean, why = busy ? 'busy' : 'failed'): void {
    this.note(job, `${why} ${peer.slice(-4)}`)
    job.active.delete(peer)
    const attempt = job.placed.get(peer) ?? { connectionEpoch: undefined, advertSeq: undefined, holdProbability: 1, isParent: false, busy }
    job.placed.delete(peer)
    job.tried.set(peer, { ...attempt, busy })
  }

  /** Records what happened to a demand job (only those are logged), with its time since it began (bounded). */
  private note (job: Job, event: string): void {
    if (this.init.logger === undefined || job.priority !== 'demand' || job.events.length >= MAX_JOB_EVENTS) return
    job.events.push(`${Math.round(this.clock.nowMs() - job.startedAtMs)} ms ${event}`)
  }

  /** A demand block that took long: say what was tried, so a stall can be told from its cause in the logs. */
  private logIfSlow (job: Job): void {
    const ms = this.clock.nowMs() - job.startedAtMs
    if (job.priority !== 'demand' || ms < SLOW_BLOCK_LOG_MS) return
    this.init.logger?.info('slow block', { image: job.manifest.imageId, block: job.index, ms: Math.round(ms), events: job.events })
  }

  /** Picks a peer for the job: parents that probably hold it first, then any peer that advertises it. */
  private pickSource (job: Job, exclude: ReadonlySet<string>, hedge = false): { peerId: string, info: SourceInfo, lastResort: boolean } | null {
    const usable = this.directory.sources(job.manifest).filter(info =>
      !this.directory.isBanned(info.peerId) && !exclude.has(info.peerId) && this.askable(job, info))
    // Parents relay blocks they lack (they fetch them from their own parents), at the scheduler's relay
    // penalty; other peers are asked only for blocks they advertise.
    const parents = usable.filter(info => info.isParent)
    const all = usable.filter(info => info.holdProbability(job.index) > 0)
    const notFull = all.filter(info => !info.full)
    // Advert summaries are coarse: a peer that holds some of a block's group may not hold the block. Peers that
    // probably hold it go first; a full peer (a seed: it surely holds it) before mere guesses, each of which
    // costs a round trip when wrong (a churn run: a VM's read walked six such peers, 1.4-2.4 s, every one 'not
    // present', while a seed held it).
    const probable = notFull.filter(info => info.holdProbability(job.index) >= PROBABLE_HOLD)
    const guesses = notFull.filter(info => info.holdProbability(job.index) < PROBABLE_HOLD)
    // A peer whose child slots are all taken (typically a busy seed) is asked only as a last resort, and never
    // for a hedge (an extra copy). An agent still attaching (no parent yet) gives its first parents a grace
    // (directory.attaching) before a VM's read goes there, so a wave of agents does not pull its first reads
    // from the origin; after it, a read goes there rather than wait longer, within the last-resort budget while
    // the tree has room for us (last-resort-budget.ts: bytes from a full peer are bytes outside the tree).
    // Prefetch waits for parents.
    const attaching = parents.length === 0 && (job.priority !== 'demand' || this.directory.attaching(job.manifest))
    const lastResort = hedge || attaching ? [] : all.filter(info => info.full)
    let budgetWaitMs: number | undefined
    for (const group of [parents, probable, lastResort, guesses]) {
      if (group.length === 0) continue
      const choice = chooseSource({ blockIndex: job.index, sizeBytes: job.bytes }, this.sourceStates(job, group), this.params)
      if (choice === null) continue
      const info = group[choice.index]
      const isLastResort = group === lastResort
      if (isLastResort && this.directory.canAttach(job.manifest) && !this.lastResortBudget.tryTake(job.bytes)) {
        // Out of budget: a guess may still be right; else wait for the refill.
        budgetWaitMs = this.lastResortBudget.msUntil(job.bytes)
        continue
      }
      return { peerId: choice.peerId, info, lastResort: isLastResort }
    }
    if (budgetWaitMs !== undefined) job.budgetWaitMs = budgetWaitMs
    return null
  }

  private assign (job: Job): void {
    if (job.done || job.waiting) return
    if (job.assignments >= this.maxAssignments) {
      this.fail(job, new PeerTriesExhaustedError(`block ${job.index} of ${job.manifest.imageId}: no peer served it after ${job.assignments} tries`))
      return
    }
    const choice = this.pickSource(job, EMPTY)
    if (choice === null) {
      if (job.active.size > 0) return // still pending somewhere else
      void this.waitAndAssign(job)
      return
    }
    this.enqueue(job, choice.info, choice.lastResort)
  }

  /** Puts the job on the peer's queue (demand or prefetch) and lets that queue dispatch. */
  private enqueue (job: Job, info: SourceInfo, lastResort = false): void {
    const peer = info.peerId
    this.note(job, `${lastResort ? 'last resort ' : info.isParent ? 'parent ' : ''}${peer.slice(-4)}`)
    job.assignments++
    job.active.add(peer)
    job.placed.set(peer, this.attemptOf(job, info))
    const queue = this.queue(peer)
    queue.lastResort = lastResort
    if (lastResort) this.stats.lastResortBytes += job.bytes
    ;(job.priority === 'demand' ? queue.demand : queue.prefetch).push(job)
    queue.queuedBytes += job.bytes
    // Dispatch once the caller has placed all its jobs (a microtask later), so the blocks of one fetch that
    // went to this peer leave as one GET. Dispatching per job sent one GET per block: 699 requests for the
    // boot trace's 801 blocks, and a request costs both agents far more CPU than a block (npm run calibrate).
    if (queue.dispatchQueued) return
    queue.dispatchQueued = true
    queueMicrotask(() => {
      queue.dispatchQueued = false
      void this.dispatch(queue)
    })
  }

  /**
   * Nobody to ask: wait for the image's sources to change (an advert, a parent, a connection), then place the
   * job on a peer that is new or changed (askable). Woken by those events only, never by a timer; the clock
   * bounds the wait (noSourceWaitMs in all per job), the caller's signal ends it.
   */
  private async waitAndAssign (job: Job): Promise<void> {
    this.note(job, 'wait')
    job.waiting = true
    this.stats.waits++
    const startedAtMs = this.clock.nowMs()
    const timeout = new AbortController()
    const stopTimer = new AbortController()
    const remainingMs = Math.max(0, this.noSourceWaitMs - job.waitedMs)
    this.clock.sleep(remainingMs, stopTimer.signal).then(() => {
      timeout.abort(new NoPeerForBlockError(`no peer could serve block ${job.index} of ${job.manifest.imageId} within ${this.noSourceWaitMs} ms`))
    }, () => {})
    const signal = AbortSignal.any([job.signal, timeout.signal])
    try {
      while (!job.done) {
        await this.waitForChange(job, signal)
        if (job.done) return
        // A busy peer may have room now; anything else is asked again only once it changed (askable).
        for (const [peer, attempt] of job.tried) if (attempt.busy) job.tried.delete(peer)
        const choice = this.pickSource(job, EMPTY)
        if (choice !== null) {
          this.stats.wakeups++
          job.waiting = false
          this.enqueue(job, choice.info, choice.lastResort)
          return
        }
      }
    } catch (err) {
      if (!job.done) this.fail(job, (job.signal.aborted ? job.signal.reason : timeout.signal.aborted ? timeout.signal.reason : err) as Error)
    } finally {
      job.waiting = false
      job.waitedMs += this.clock.nowMs() - startedAtMs
      stopTimer.abort()
    }
  }

  /**
   * Resolves at the image's next source change, or, when the job is held back only by the last-resort budget,
   * when the budget has its bytes (whichever is first); rejects when the signal aborts.
   */
  private async waitForChange (job: Job, signal: AbortSignal): Promise<void> {
    const budgetMs = job.budgetWaitMs
    job.budgetWaitMs = 0
    if (budgetMs <= 0) {
      await this.directory.waitForSources(job.manifest, signal)
      return
    }
    const refilled = new AbortController()
    const either = AbortSignal.any([signal, refilled.signal])
    this.clock.sleep(budgetMs, either).then(() => { refilled.abort() }, () => {})
    try {
      await this.directory.waitForSources(job.manifest, either)
    } catch (err) {
      if (signal.aborted || !refilled.signal.aborted) throw err
    } finally {
      refilled.abort()
    }
  }

  private async dispatch (queue: PeerQueue): Promise<void> {
    if (queue.dispatching) return
    queue.dispatching = true
    try {
      while (true) {
        prune(queue.demand, queue)
        prune(queue.prefetch, queue)
        const isDemand = queue.demand.length > 0
        const list = isDemand ? queue.demand : queue.prefetch
        if (list.length === 0) break
        const cap = queue.lastResort ? this.maxLastResortInflight : isDemand ? this.maxInflight : this.maxPrefetchInflight
        if (queue.inflightBytes >= cap) break
        // One GET: jobs of one image from the head of the list, up to the request byte bound and, since jobs
        // now queue up before a dispatch, up to the room left under the in-flight cap (a full peer's 256 KiB).
        const root = list[0].manifest.root
        const batch: Job[] = []
        let bytes = 0
        const room = Math.min(this.maxRequestBytes, cap - queue.inflightBytes)
        for (let i = 0; i < list.length && batch.length < MAX_INDEXES_PER_GET;) {
          const job = list[i]
          if (job.manifest.root !== root) { i++; continue }
          if (batch.length > 0 && bytes + job.bytes > room) break
          list.splice(i, 1)
          queue.queuedBytes -= job.bytes
          if (job.done) continue
          batch.push(job)
          bytes += job.bytes
        }
        if (batch.length === 0) continue
        queue.inflightBytes += bytes
        queue.inflightRequests++
        if (this.init.downloadBucket !== undefined) await this.init.downloadBucket.take(bytes, this.stopController.signal).catch(() => {})
        void this.request(queue, batch, bytes, isDemand)
      }
    } finally {
      queue.dispatching = false
    }
  }

  private async request (queue: PeerQueue, batch: Job[], bytes: number, isDemand: boolean): Promise<void> {
    const peer = queue.peerId
    const manifest = batch[0].manifest
    const link = this.directory.link(peer)
    this.stats.requests++
    const startedAtMs = this.clock.nowMs()
    const state = this.sourceStates(batch[0], [{ peerId: peer, isParent: true, holdProbability: () => 1, full: false }])[0]
    const expectedMs = (state.rttMs ?? this.params.defaultRttMs) + bytes * 1000 / (state.throughputBytesPerS ?? this.params.defaultThroughputBytesPerS)
    const controller = new AbortController()
    const timeout = setTimeout(() => { controller.abort(new PeerTimeoutError(`${peer} did not answer ${batch.length} blocks in ${this.requestTimeoutMs} ms`)) }, this.requestTimeoutMs)
    let hedgeTimer: NodeJS.Timeout | undefined
    if (isDemand) {
      const delay = hedgeDeadlineMs({ startedAtMs, expectedMs }, this.params) - startedAtMs
      hedgeTimer = setTimeout(() => { this.hedge(batch, peer) }, delay)
    }
    // When every job of the batch is settled elsewhere (or failed), the request is cancelled.
    const byIndex = new Map(batch.map(job => [job.index, job]))
    const inflight: InflightRequest = { pending: byIndex, controller }
    for (const job of batch) job.requests.add(inflight)
    const onBlock = (index: number, data: Uint8Array | null): void => {
      const job = byIndex.get(index)
      if (job === undefined) return
      byIndex.delete(index)
      job.active.delete(peer)
      job.requests.delete(inflight)
      if (data === null) {
        this.markFailed(job, peer, false, 'not present at')
        this.stats.failovers++
        this.assign(job)
        return
      }
      this.directory.onReceived(manifest, peer, data.byteLength)
      if (job.done) { this.stats.duplicateBlocks++; return }
      this.note(job, `got from ${peer.slice(-4)}`)
      this.logIfSlow(job)
      this.settle(job)
      const block = { index, data, peer }
      job.onBlock?.(block)
      job.resolve(block)
    }
    try {
      await link.getBlocks(manifest.root, batch.map(job => job.index), isDemand ? PRIORITY_DEMAND : PRIORITY_PREFETCH,
        { signal: controller.signal, onBlock })
    } catch (err) {
      const superseded = controller.signal.reason instanceof RequestSupersededError
      if (!this.stopController.signal.aborted && !superseded) this.directory.reportFailed(manifest, peer, err as Error)
      const busy = (err as Error).name === 'PeerBusyError'
      for (const [, job] of byIndex) {
        this.markFailed(job, peer, busy, superseded ? 'superseded' : `${(err as Error).name} from`)
        this.stats.failovers++
        this.assign(job)
      }
    } finally {
      clearTimeout(timeout)
      if (hedgeTimer !== undefined) clearTimeout(hedgeTimer)
      for (const job of batch) job.requests.delete(inflight)
      queue.inflightBytes -= bytes
      queue.inflightRequests--
      void this.dispatch(queue)
    }
  }

  /** Marks the job done and cancels the other requests that were only waiting for it (hedge losers). */
  private settle (job: Job): void {
    job.done = true
    for (const other of job.requests) {
      other.pending.delete(job.index)
      if (other.pending.size === 0 && !other.controller.signal.aborted) {
        this.stats.cancelled++
        other.controller.abort(new RequestSupersededError(`block ${job.index} arrived from another peer`))
      }
    }
    job.requests.clear()
  }

  private hedge (batch: Job[], slowPeer: string): void {
    for (const job of batch) {
      if (job.done || job.hedged) continue
      job.hedged = true
      const choice = this.pickHedge(job, slowPeer)
      if (choice === null) continue
      this.stats.hedges++
      this.enqueue(job, choice.info)
    }
  }

  private fail (job: Job, err: Error): void {
    if (job.done) return
    this.note(job, `gave up: ${err.name}`)
    this.logIfSlow(job)
    this.settle(job)
    job.reject(err)
  }
}

const EMPTY: ReadonlySet<string> = new Set()

/** Drops finished jobs from a queue (a hedge or failover settled them elsewhere). */
function prune (list: Job[], queue: PeerQueue): void {
  let w = 0
  for (let r = 0; r < list.length; r++) {
    const job = list[r]
    if (job.done) { queue.queuedBytes -= job.bytes; job.active.delete(queue.peerId); continue }
    list[w++] = job
  }
  list.length = w
}
