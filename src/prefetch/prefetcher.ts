// The prefetch driver for one image on one agent: decides when to fetch (planner + idle detector + rate
// limit) and keeps a bounded number of prefetch batches in flight through the injected `fetch`.
//
// - Read-ahead runs while instances are booting: profile order ahead of each instance's latest read; with no
//   profile (a first boot), or for a read the profile does not list, the next missing blocks after the read
//   (sequential read-ahead, planner.ts). It goes on while an on-demand read is pending (what follows that read
//   is what the VM needs next; the block source queues 'prefetch' behind 'demand'), bounded in flight.
// - Idle prefetch runs when the link is idle (see idle.ts), token-bucket rate limited: rest of the profile,
//   then the whole image. It pauses at once while an on-demand read is pending: no new idle batch starts
//   until the last one ends (and with abortInFlightOnDemand the batches in flight are aborted, so a FIFO link
//   serves the demand read next).
// Time comes from the injected clock, timers from the injected scheduler; `tick()` may be called by hand
// (tests, the simulator) instead of start().

import { PrefetcherStoppedError } from './errors.js'
import { checkProfileFits, type BootProfile } from './profile.js'
import {
  indexProfile, newReadAhead, observeRead, planIdle, planReadAhead, planSequential, readAheadParams, sequentialParams, IDLE_START,
  type IdleCursor, type ProfileIndex, type ReadAheadParams, type ReadAheadState, type SequentialParams
} from './planner.js'
import {
  idleStep, newTokenBucket, tryTake, DEFAULT_IDLE_PARAMS, IDLE_INITIAL,
  type IdleParams, type IdleState, type TokenBucket, type TokenBucketParams, type UtilizationSample
} from './idle.js'

export interface PrefetchStore {
  has: (block: number) => boolean
  readonly blockCount: number
  readonly blockSizeBytes: number
  /** The image's manifest root: when given, setProfile refuses a profile of other content. */
  readonly rootHex?: string
  /** Present blocks, zero blocks included; counted through has() when absent. */
  presentCount?: () => number
  /** Zero blocks (holes): skipped by sequential read-ahead windows. */
  isZero?: (block: number) => boolean
}

export type PrefetchFetch = (blocks: readonly number[], options: { signal: AbortSignal, priority: 'prefetch' }) => Promise<void>

export interface Clock { nowMs: () => number }
export interface Scheduler {
  setTimeout: (fn: () => void, delayMs: number) => unknown
  clearTimeout: (handle: unknown) => void
}

export const systemClock: Clock = { nowMs: () => Date.now() }
export const systemScheduler: Scheduler = {
  setTimeout: (fn, delayMs) => { const t = setTimeout(fn, delayMs); t.unref?.(); return t },
  clearTimeout: handle => { clearTimeout(handle as ReturnType<typeof setTimeout>) }
}

export const PREFETCH_DEFAULTS = {
  batchBytes: 1024 * 1024,
  maxInFlightBatches: 2,
  rateBytesPerSec: 32 * 1024 * 1024,
  tickMs: 250,
  stopTimeoutMs: 5000,
  backoffBaseMs: 500,
  backoffMaxMs: 30_000,
  maxUtilizationSamples: 64
}

export interface PrefetcherInit {
  store: PrefetchStore
  fetch: PrefetchFetch
  clock?: Clock
  scheduler?: Scheduler
  profile?: BootProfile
  /** Aborting it stops the prefetcher. */
  signal?: AbortSignal
  /** On-demand reads waiting, if the caller counts them itself (added to onDemandStart/End's count). */
  pendingOnDemand?: () => number
  batchBlocks?: number
  maxInFlightBatches?: number
  readAhead?: Partial<ReadAheadParams> & { initialWindowBytes?: number, maxWindowBytes?: number }
  /** Read-ahead without a profile; `windowBlocks: 0` turns it off. */
  sequential?: Partial<SequentialParams> & { windowBytes?: number, scanBytes?: number }
  idle?: Partial<IdleParams>
  /** Idle prefetch off: read-ahead only. */
  idleEnabled?: boolean
  /** Asked at every tick: false holds idle prefetch back (e.g. while peers boot the image). Read-ahead goes on. */
  idleGate?: () => boolean
  /**
   * Asked at every tick: false holds sequential read-ahead back. In a boot wave (peers boot the image too) a
   * host follows their live first-touch order instead of guessing: each sequential guess that misses is a
   * block moved through the tree for nothing: in the 8-host testbed each host received 64 MiB with the guesses
   * and 52 without (50 is what its reads touch in 64 KiB blocks), and the origin sent 1.58x the boot's bytes
   * against 1.26x.
   */
  sequentialGate?: () => boolean
  rateBytesPerSec?: number
  burstBytes?: number
  abortInFlightOnDemand?: boolean
  tickMs?: number
  stopTimeoutMs?: number
  /** Called after each batch settles (for logs and tests). */
  onBatchSettled?: (event: BatchEvent) => void
}

export interface BatchEvent {
  id: number
  kind: 'readAhead' | 'idle'
  blocks: readonly number[]
  outcome: 'ok' | 'aborted' | 'failed'
  error?: unknown
}

export type PrefetchMode = 'stopped' | 'paused' | 'readAhead' | 'idle' | 'waiting' | 'done'

export interface TickResult {
  mode: PrefetchMode
  batchesStarted: number
  blocksRequested: number
}

export interface PrefetchProgress {
  mode: PrefetchMode
  bytesFetched: number
  blocksFetched: number
  blocksRemaining: number
  /** At the rate measured while fetching; null until something was fetched. */
  etaMs: number | null
  inFlightBatches: number
  failedBatches: number
  instances: number
}

export interface Prefetcher {
  start: () => void
  stop: () => Promise<void>
  tick: () => TickResult
  setProfile: (profile: BootProfile | undefined) => void
  instanceStarted: (instanceId: string) => void
  instanceStopped: (instanceId: string) => void
  /** A read of an instance: moves its read-ahead position. `hit`: every block was local. */
  noteRead: (instanceId: string, offset: number, length: number, hit: boolean) => void
  onDemandStart: () => void
  onDemandEnd: () => void
  /** Foreground link utilization (0..1), excluding this prefetcher's own traffic. */
  noteUtilization: (utilization: number) => void
  progress: () => PrefetchProgress
  /** Resolves when no batch is in flight. */
  settled: () => Promise<void>
  /** Plans again soon (an on-demand read the caller counts through pendingOnDemand just ended). */
  wake: () => void
  /** Idle prefetch on or off (e.g. off while the cache is at its quota); read-ahead is not affected. */
  setIdleEnabled: (enabled: boolean) => void
}

const MAX_IDLE_SCANS_PER_TICK = 16

interface Batch { id: number, kind: 'readAhead' | 'idle', blocks: number[], controller: AbortController, done: Promise<void> }

export function createPrefetcher (init: PrefetcherInit): Prefetcher {
  const { store } = init
  const clock = init.clock ?? systemClock
  const scheduler = init.scheduler ?? systemScheduler
  const blockSizeBytes = store.blockSizeBytes
  const batchBlocks = Math.max(1, init.batchBlocks ?? Math.floor(PREFETCH_DEFAULTS.batchBytes / blockSizeBytes))
  const maxInFlight = Math.max(1, init.maxInFlightBatches ?? PREFETCH_DEFAULTS.maxInFlightBatches)
  const raParams = readAheadParams(blockSizeBytes, init.readAhead)
  const seqParams = sequentialParams(blockSizeBytes, init.sequential)
  // Read-ahead blocks in flight at most (as many as the idle batches may have).
  const maxReadAheadInFlight = maxInFlight * batchBlocks
  const idleParams: IdleParams = { ...DEFAULT_IDLE_PARAMS, ...init.idle }
  const rate = init.rateBytesPerSec ?? PREFETCH_DEFAULTS.rateBytesPerSec
  const bucketParams: TokenBucketParams = { rateBytesPerSec: rate, burstBytes: init.burstBytes ?? Math.max(2 * batchBlocks * blockSizeBytes, rate / 4) }
  const tickMs = init.tickMs ?? PREFETCH_DEFAULTS.tickMs

  let index: ProfileIndex | undefined
  const instances = new Map<string, ReadAheadState>()
  /** Instances whose latest read the profile does not list (or there is none): its last block, for sequential read-ahead. */
  const sequentialFrom = new Map<string, number>()
  /** Each instance's latest read (first and last block): places it again in a new profile. */
  const lastRead = new Map<string, { firstBlock: number, lastBlock: number }>()
  let readAheadInFlight = 0
  let idleBatches = 0
  const inFlightBlocks = new Set<number>()
  const batches = new Map<number, Batch>()
  let nextBatchId = 1
  let demandCount = 0
  let started = false
  let stopped = false
  let mode: PrefetchMode = 'waiting'
  let idleCursor: IdleCursor = IDLE_START
  let idleState: IdleState = IDLE_INITIAL
  let bucket: TokenBucket = newTokenBucket(bucketParams, clock.nowMs())
  const samples: UtilizationSample[] = []
  let timer: { handle: unknown, dueMs: number } | undefined
  /** A tick due at once (schedule(0)), beside `timer`. */
  let soon: unknown
  let bytesFetched = 0
  let blocksFetched = 0
  let failedBatches = 0
  let consecutiveFailures = 0
  let backoffUntilMs = -Infinity
  let activeSinceMs: number | undefined
  let activeMs = 0
  let waiters: Array<() => void> = []
  // Blocks of idle batches that were aborted or failed: fetched again first (the cursor has moved past them).
  let retry: number[] = []
  let idleEnabled = init.idleEnabled !== false

  const pending = (): number => demandCount + (init.pendingOnDemand?.() ?? 0)
  const filter = { has: (b: number) => store.has(b), inFlight: (b: number) => inFlightBlocks.has(b), isZero: store.isZero }

  function presentCount (): number {
    if (store.presentCount !== undefined) return store.presentCount()
    let n = 0
    for (let b = 0; b < store.blockCount; b++) if (store.has(b)) n++
    return n
  }

  function schedule (delayMs: number): void {
    if (!started || stopped) return
    if (delayMs <= 0) {
      // A tick at once (a VM's read, a batch settled) leaves the later timer where it is. Why: this runs on every
      // VM read, and replacing the later timer cost a clear and two sets per read (the 250 ms tick re-armed
      // after each), 1.4 % of a host agent's CPU in the 8-host testbed wave (perf).
      if (soon === undefined) soon = scheduler.setTimeout(() => { soon = undefined; tick() }, 0)
      return
    }
    const dueMs = clock.nowMs() + Math.max(0, delayMs)
    if (timer !== undefined) {
      if (timer.dueMs <= dueMs) return
      scheduler.clearTimeout(timer.handle)
    }
    const handle = scheduler.setTimeout(() => {
      timer = undefined
      tick()
    }, Math.max(0, delayMs))
    timer = { handle, dueMs }
  }

  function launch (kind: Batch['kind'], blocks: number[]): void {
    const id = nextBatchId++
    const controller = new AbortController()
    for (const b of blocks) inFlightBlocks.add(b)
    if (kind === 'readAhead') readAheadInFlight += blocks.length
    else idleBatches++
    if (batches.size === 0) activeSinceMs = clock.nowMs()
    const settle = (outcome: BatchEvent['outcome'], error?: unknown): void => {
      batches.delete(id)
      if (kind === 'readAhead') readAheadInFlight -= blocks.length
      else idleBatches--
      for (const b of blocks) inFlightBlocks.delete(b)
      if (batches.size === 0 && activeSinceMs !== undefined) {
        activeMs += clock.nowMs() - activeSinceMs
        activeSinceMs = undefined
      }
      let got = 0
      for (const b of blocks) if (store.has(b)) got++
      blocksFetched += got
      bytesFetched += got * blockSizeBytes
      if (outcome !== 'ok' && kind === 'idle') {
        for (const b of blocks) if (!store.has(b) && retry.length < maxInFlight * batchBlocks * 2) retry.push(b)
      }
      if (outcome === 'failed') {
        failedBatches++
        consecutiveFailures++
        backoffUntilMs = clock.nowMs() + Math.min(PREFETCH_DEFAULTS.backoffMaxMs, PREFETCH_DEFAULTS.backoffBaseMs * 2 ** (consecutiveFailures - 1))
      } else if (outcome === 'ok') {
        consecutiveFailures = 0
      }
      try { init.onBatchSettled?.({ id, kind, blocks, outcome, error }) } catch { /* a logger must not break prefetch */ }
      if (batches.size === 0) {
        const w = waiters
        waiters = []
        for (const f of w) f()
      }
      schedule(outcome === 'failed' ? backoffUntilMs - clock.nowMs() : 0)
    }
    let done: Promise<void>
    try {
      done = init.fetch(blocks, { signal: controller.signal, priority: 'prefetch' }).then(
        () => { settle(controller.signal.aborted ? 'aborted' : 'ok') },
        (err: unknown) => { settle(controller.signal.aborted ? 'aborted' : 'failed', err) })
    } catch (err) {
      done = Promise.resolve().then(() => { settle('failed', err) })
    }
    batches.set(id, { id, kind, blocks, controller, done })
  }

  function tick (): TickResult {
    const result = (m: PrefetchMode, batchesStarted = 0, blocksRequested = 0): TickResult => {
      mode = m
      if (m !== 'stopped' && m !== 'done') schedule(tickMs)
      else if (timer !== undefined) {
        // Nothing more to do: the later tick (kept by a tick at once) is not needed either.
        scheduler.clearTimeout(timer.handle)
        timer = undefined
      }
      return { mode: m, batchesStarted, blocksRequested }
    }
    if (stopped) return result('stopped')
    const nowMs = clock.nowMs()
    const demandPending = pending() > 0
    idleState = idleStep(idleState, { nowMs, samples, pendingOnDemand: pending() }, idleParams)
    if (nowMs < backoffUntilMs) return result(demandPending ? 'paused' : 'waiting')
    let launched = 0
    let requested = 0
    let kind: PrefetchMode | undefined
    const launchReadAhead = (blocks: number[]): void => {
      for (let i = 0; i < blocks.length; i += batchBlocks) {
        const batch = blocks.slice(i, i + batchBlocks)
        launch('readAhead', batch)
        launched++
        requested += batch.length
        kind = 'readAhead'
      }
    }
    if (instances.size > 0) {
      const onProfile = [...instances.values()].filter(st => !sequentialFrom.has(st.instanceId))
      if (index !== undefined && onProfile.length > 0 && readAheadInFlight < maxReadAheadInFlight) {
        launchReadAhead(planReadAhead(index, onProfile, filter, raParams, maxReadAheadInFlight - readAheadInFlight))
      }
      if (sequentialFrom.size > 0 && seqParams.windowBlocks > 0 && readAheadInFlight < maxReadAheadInFlight && init.sequentialGate?.() !== false) {
        launchReadAhead(planSequential([...sequentialFrom.values()], store.blockCount, filter, seqParams, maxReadAheadInFlight - readAheadInFlight))
      }
    }
    if (demandPending) return result(kind ?? 'paused', launched, requested)
    let slots = maxInFlight - idleBatches
    if (idleEnabled && idleState.idle && slots > 0 && idleCursor.phase !== 'done' && init.idleGate?.() !== false) {
      // Each plan scans a bounded stretch; a present stretch longer than this many scans waits for the next tick.
      for (let scans = 0; slots > 0 && scans < MAX_IDLE_SCANS_PER_TICK; scans++) {
        const plan = retry.length > 0
          ? peekRetry()
          : planIdle(index, store.blockCount, idleCursor, filter, batchBlocks)
        if (plan.blocks.length === 0) {
          idleCursor = plan.cursor
          if (plan.cursor.phase === 'done') break
          continue
        }
        const take = tryTake(bucket, bucketParams, nowMs, plan.blocks.length * blockSizeBytes)
        bucket = take.bucket
        if (!take.ok) {
          schedule(take.waitMs)
          break
        }
        idleCursor = plan.cursor
        launch('idle', plan.blocks) // launched blocks are in flight: the next peekRetry drops them
        launched++
        requested += plan.blocks.length
        slots--
        kind ??= 'idle'
      }
    }
    if (kind !== undefined) return result(kind, launched, requested)
    if (batches.size > 0) return result(mode === 'readAhead' || mode === 'idle' ? mode : 'waiting')
    if (idleCursor.phase === 'done' || presentCount() === store.blockCount) {
      // A wrap found nothing missing: but a failed batch may have left gaps; re-check on the next event.
      if (presentCount() === store.blockCount) return result('done')
      idleCursor = { phase: 'image', position: 0, quietScan: 0 }
    }
    return result('waiting')
  }

  function peekRetry (): { blocks: number[], cursor: IdleCursor } {
    retry = retry.filter(b => !store.has(b) && !inFlightBlocks.has(b))
    return { blocks: retry.slice(0, batchBlocks), cursor: idleCursor }
  }

  function abortAll (reason: Error): void {
    for (const b of batches.values()) b.controller.abort(reason)
  }

  async function stop (): Promise<void> {
    if (stopped) return
    stopped = true
    started = false
    mode = 'stopped'
    if (timer !== undefined) scheduler.clearTimeout(timer.handle)
    timer = undefined
    if (soon !== undefined) scheduler.clearTimeout(soon)
    soon = undefined
    abortAll(new PrefetcherStoppedError('prefetcher stopped'))
    if (batches.size === 0) return
    // Bounded: a fetch that ignores its signal does not hold stop() forever.
    await new Promise<void>(resolve => {
      const handle = scheduler.setTimeout(resolve, init.stopTimeoutMs ?? PREFETCH_DEFAULTS.stopTimeoutMs)
      waiters.push(() => { scheduler.clearTimeout(handle); resolve() })
    })
  }

  init.signal?.addEventListener('abort', () => { void stop() }, { once: true })
  if (init.profile !== undefined) setProfile(init.profile)

  /** Moves an instance's read-ahead to a read: the profile's when it lists the read, else the sequential one. */
  function place (instanceId: string, state: ReadAheadState, firstBlock: number, lastBlock: number, hit: boolean): void {
    if (index !== undefined) instances.set(instanceId, observeRead(index, state, { firstBlock, lastBlock, hit }, raParams))
    let listed = false
    for (let b = firstBlock; index !== undefined && b <= lastBlock && b < firstBlock + raParams.maxScan && !listed; b++) listed = index.positionOf(b) >= 0
    if (listed) sequentialFrom.delete(instanceId)
    else sequentialFrom.set(instanceId, lastBlock)
  }

  function setProfile (profile: BootProfile | undefined): void {
    if (profile !== undefined) {
      checkProfileFits(profile, { rootHex: store.rootHex ?? profile.rootHex, blockCount: store.blockCount, blockSizeBytes })
      index = indexProfile(profile)
    } else {
      index = undefined
    }
    // Positions refer to the old order: each instance is placed again at its latest read (a live profile grows
    // while the instances boot: they keep their place in it), or starts over before its first read.
    for (const id of instances.keys()) {
      const fresh = newReadAhead(id, raParams)
      instances.set(id, fresh)
      const read = lastRead.get(id)
      if (read !== undefined) place(id, fresh, read.firstBlock, read.lastBlock, true)
    }
    idleCursor = IDLE_START
    schedule(0)
  }

  return {
    start () {
      if (stopped) throw new PrefetcherStoppedError('prefetcher was stopped')
      if (init.signal?.aborted === true) { void stop(); return }
      started = true
      schedule(0)
    },
    stop,
    tick,
    setProfile,
    instanceStarted (instanceId) {
      instances.set(instanceId, newReadAhead(instanceId, raParams))
      schedule(0)
    },
    instanceStopped (instanceId) {
      instances.delete(instanceId)
      sequentialFrom.delete(instanceId)
      lastRead.delete(instanceId)
    },
    noteRead (instanceId, offset, length, hit) {
      const state = instances.get(instanceId)
      if (state === undefined || !(offset >= 0) || !(length > 0)) return
      const firstBlock = Math.floor(offset / blockSizeBytes)
      const lastBlock = Math.min(store.blockCount - 1, Math.floor((offset + length - 1) / blockSizeBytes))
      if (firstBlock >= store.blockCount) return
      lastRead.set(instanceId, { firstBlock, lastBlock })
      place(instanceId, state, firstBlock, lastBlock, hit)
      schedule(0)
    },
    onDemandStart () {
      demandCount++
      mode = 'paused'
      if (init.abortInFlightOnDemand === true) abortAll(new Error('prefetch yields to an on-demand read'))
    },
    onDemandEnd () {
      demandCount = Math.max(0, demandCount - 1)
      if (pending() === 0) schedule(0)
    },
    noteUtilization (utilization) {
      samples.push({ tMs: clock.nowMs(), utilization })
      if (samples.length > PREFETCH_DEFAULTS.maxUtilizationSamples) samples.shift()
    },
    progress () {
      const remaining = store.blockCount - presentCount()
      const nowMs = clock.nowMs()
      const busyMs = activeMs + (activeSinceMs !== undefined ? nowMs - activeSinceMs : 0)
      const etaMs = remaining === 0 ? 0 : bytesFetched > 0 && busyMs > 0 ? Math.round(remaining * blockSizeBytes / (bytesFetched / busyMs)) : null
      return {
        // Derived from the same count as blocksRemaining (and the peer layer's heldFraction), not from the last
        // tick: between the last block's arrival and the next tick, a stored mode would still say 'idle'.
        mode: remaining === 0 ? 'done' : stopped ? 'stopped' : mode,
        bytesFetched,
        blocksFetched,
        blocksRemaining: remaining,
        etaMs,
        inFlightBatches: batches.size,
        failedBatches,
        instances: instances.size
      }
    },
    settled () {
      if (batches.size === 0) return Promise.resolve()
      return new Promise<void>(resolve => { waiters.push(resolve) })
    },
    wake () {
      if (pending() === 0) schedule(0)
    },
    setIdleEnabled (enabled) {
      if (enabled === idleEnabled) return
      idleEnabled = enabled
      if (enabled) schedule(0)
    }
  }
}

