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

import { setMaxListeners } from 'node:events'
import type { Manifest } from '../blockstack/manifest.js'
import { blockLength } from '../blockstack/manifest.js'
import type { BlockSource, FetchedBlock, FetchOptions, FetchPriority } from '../blockstack/types.js'
import {
  DEFAULT_SCHEDULER_PARAMS, chooseSource, hedgeDeadlineMs, type SchedulerParams, type SourceState
} from '../topology/scheduler.js'
import { NoPeerForBlockError, PeerTimeoutError, RequestSupersededError } from './errors.js'
import type { PeerLink } from './peer-link.js'
import { PRIORITY_DEMAND, PRIORITY_PREFETCH, MAX_INDEXES_PER_GET } from './wire.js'
import type { TokenBucket } from './rate-limit.js'
import { systemClock, type Clock } from './clock.js'

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
/** A job placed on this many peers without success fails. */
export const DEFAULT_MAX_ASSIGNMENTS = 8
/** With no peer for a block, wait this long for adverts or parents to appear before failing. */
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
}

/** What the peer source needs from the service: who can serve an image, links, and where to report. */
export interface PeerDirectory {
  sources: (manifest: Manifest) => SourceInfo[]
  /** True while the agent has no parent for the image and its short attach grace runs (see pickSource). */
  attaching: (manifest: Manifest) => boolean
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
  clock?: Clock
}

interface Job {
  manifest: Manifest
  index: number
  bytes: number
  priority: FetchPriority
  /** Peers this job was sent to (or that failed it). */
  tried: Set<string>
  /** Peers it is queued at or in flight to. */
  active: Set<string>
  assignments: number
  hedged: boolean
  done: boolean
  /** Requests in flight that ask for this job's block. */
  requests: Set<InflightRequest>
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
  private readonly stopController = new AbortController()
  readonly stats: PeerSourceStats = { requests: 0, hedges: 0, cancelled: 0, failovers: 0, duplicateBlocks: 0 }

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
        manifest, index, bytes: blockLength(manifest, index), priority, tried: new Set(), active: new Set(), assignments: 0,
        hedged: false, done: false, requests: new Set(), signal, onBlock: options.onBlock, resolve, reject
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
      job.active.delete(peer)
      job.tried.add(peer)
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
      queue = { peerId, demand: [], prefetch: [], queuedBytes: 0, inflightBytes: 0, inflightRequests: 0, dispatching: false, lastResort: false }
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

  /** Picks a peer for the job: parents that probably hold it first, then any peer that advertises it. */
  private pick (job: Job, exclude: ReadonlySet<string>, hedge = false): string | null {
    return this.pickSource(job, exclude, hedge)?.peerId ?? null
  }

  private pickSource (job: Job, exclude: ReadonlySet<string>, hedge = false): { peerId: string, lastResort: boolean } | null {
    const usable = this.directory.sources(job.manifest).filter(info => !this.directory.isBanned(info.peerId) && !exclude.has(info.peerId))
    // Parents relay blocks they lack (they fetch them from their own parents), at the scheduler's relay
    // penalty; other peers are asked only for blocks they advertise.
    const parents = usable.filter(info => info.isParent)
    const all = usable.filter(info => info.holdProbability(job.index) > 0)
    const notFull = all.filter(info => !info.full)
    // A peer whose child slots are all taken (typically a busy seed) is asked only as a last resort, and never
    // for a hedge (an extra copy). An agent still attaching (no parent yet) gives its first parents a grace
    // (directory.attaching) before a VM's read goes there, so a wave of agents does not pull its first reads
    // from the origin; after it, a read goes there rather than wait longer. Prefetch waits for parents.
    const attaching = parents.length === 0 && (job.priority !== 'demand' || this.directory.attaching(job.manifest))
    const lastResort = hedge || attaching ? [] : all
    for (const group of [parents, notFull, lastResort]) {
      if (group.length === 0) continue
      const choice = chooseSource({ blockIndex: job.index, sizeBytes: job.bytes }, this.sourceStates(job, group), this.params)
      if (choice !== null) return { peerId: choice.peerId, lastResort: group === lastResort && group.find(i => i.peerId === choice.peerId)?.full === true }
    }
    return null
  }

  private assign (job: Job): void {
    if (job.done) return
    if (job.assignments >= this.maxAssignments) {
      this.fail(job, new NoPeerForBlockError(`block ${job.index} of ${job.manifest.imageId}: no peer served it after ${job.assignments} tries`))
      return
    }
    const exclude = new Set([...job.tried, ...job.active])
    const choice = this.pickSource(job, exclude)
    if (choice === null) {
      if (job.active.size > 0) return // still pending somewhere else
      void this.waitAndAssign(job)
      return
    }
    this.enqueue(job, choice.peerId, choice.lastResort)
  }

  /** Puts the job on the peer's queue (demand or prefetch) and lets that queue dispatch. */
  private enqueue (job: Job, peer: string, lastResort = false): void {
    job.assignments++
    job.active.add(peer)
    const queue = this.queue(peer)
    queue.lastResort = lastResort
    ;(job.priority === 'demand' ? queue.demand : queue.prefetch).push(job)
    queue.queuedBytes += job.bytes
    void this.dispatch(queue)
  }

  /** No peer has the block yet: wait (bounded) for adverts or parents to change, then try again. */
  private async waitAndAssign (job: Job): Promise<void> {
    const signal = AbortSignal.any([job.signal, AbortSignal.timeout(this.noSourceWaitMs)])
    while (!job.done) {
      try {
        await this.directory.waitForSources(job.manifest, signal)
      } catch {
        if (!job.done) {
          this.fail(job, job.signal.aborted ? job.signal.reason as Error
            : new NoPeerForBlockError(`no peer holds block ${job.index} of ${job.manifest.imageId}`))
        }
        return
      }
      if (job.done) return
      if (this.pick(job, new Set([...job.tried, ...job.active])) !== null) {
        this.assign(job)
        return
      }
      // Peers tried in an earlier round may hold the block by now (they fetch too): try them again.
      if (job.tried.size > 0 && this.pick(job, job.active) !== null) {
        job.tried.clear()
        this.assign(job)
        return
      }
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
        // One GET: jobs of one image from the head of the list, up to the request byte bound.
        const root = list[0].manifest.root
        const batch: Job[] = []
        let bytes = 0
        for (let i = 0; i < list.length && batch.length < MAX_INDEXES_PER_GET;) {
          const job = list[i]
          if (job.manifest.root !== root) { i++; continue }
          if (batch.length > 0 && bytes + job.bytes > this.maxRequestBytes) break
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
        job.tried.add(peer)
        this.stats.failovers++
        this.assign(job)
        return
      }
      this.directory.onReceived(manifest, peer, data.byteLength)
      if (job.done) { this.stats.duplicateBlocks++; return }
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
      for (const [, job] of byIndex) {
        job.active.delete(peer)
        job.tried.add(peer)
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
      const peer = this.pick(job, new Set([...job.active, ...job.tried, slowPeer]), true)
      if (peer === null) continue
      this.stats.hedges++
      this.enqueue(job, peer)
    }
  }

  private fail (job: Job, err: Error): void {
    if (job.done) return
    this.settle(job)
    job.reject(err)
  }
}

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
