// The block cache of one image on one host.
//
// Data lives in a sparse file the size of the image; which blocks are present lives in a PresenceStore
// (level). The order of events for a fetched block is: verify its hash against the signed manifest ->
// write it to the file -> fdatasync -> mark it present. So after a crash (kill -9 or power loss) every block
// marked present verifies; a block written but not yet marked is simply fetched again.
//
// Two sets of blocks: `verified` (hash checked against the manifest: may be served, to the local hypervisor
// and to peers) and `durable` (also flushed to disk and recorded in level: what survives a crash). A block
// is verified before anything else happens to it; it waits in memory for its group commit, and is served
// from memory meanwhile, so a relay does not hold a child's read behind an fdatasync. Only durable blocks
// are recorded as present, so after a crash every block recorded present verifies.
// Concurrent reads of the same missing block share one fetch. Zero blocks of the manifest are present from
// the start: they are holes in the file and are never fetched.
//
// The disk is not trusted either (bit rot, a bad disk): blocks found present at open are `unchecked` until
// their first read, or the background scrub (scrub.ts), verifies them; every block read for a peer is
// verified. A block that fails is dropped from the present set (recorded first), counted, logged and fetched
// again. A disk that cannot take writes (ENOSPC, EIO) loses nothing marked present: the verified bytes of
// the failed write are kept in a bounded memory spill so the reads waiting for them still complete.

import { open, type FileHandle } from 'node:fs/promises'
import { constants, fstatSync, ftruncateSync, readSync, writeSync, writevSync } from 'node:fs'
import { setMaxListeners } from 'node:events'
import { setTimeout as delay } from 'node:timers/promises'
import { deadline } from './deadline.js'
import { blockLength, isZeroBlock, verifyBlock, type Manifest } from './manifest.js'
import { BlockNotPresentError, BlockVerificationError, CacheClosedError, FetchTimeoutError, NoSourceError, ReadRangeError } from './errors.js'
import type { BlockSource, BlockStore, FetchedBlock, FetchPriority } from './types.js'
import type { PresenceStore } from './presence.js'
import { Bitmap } from './bitmap.js'
import { startScrubber, SCRUB_IDLE_AFTER_MS, type ScrubOptions, type ScrubResult, type Scrubber } from './scrub.js'

export const DEFAULT_FETCH_TIMEOUT_MS = 60_000
export const DEFAULT_MAX_FETCH_ATTEMPTS = 4
/** Blocks asked of a source in one call: large enough to amortise a round trip, small enough to stripe. */
export const DEFAULT_MAX_BLOCKS_PER_FETCH = 32
/** Verified blocks waiting for their group commit; fetches wait when more than this is buffered. */
export const DEFAULT_MAX_PENDING_WRITE_BYTES = 64 * 1024 * 1024
/** Verified blocks waiting for their commit in all of an agent's caches together (PendingWriteBudget). */
export const DEFAULT_HOST_PENDING_WRITE_BYTES = 128 * 1024 * 1024

/**
 * Verified blocks waiting for their commit, counted over every cache of the agent. Why: the per-image bound
 * (maxPendingWriteBytes) alone let N images booting at once hold N x 7/8 of it in memory while their commits
 * waited for the reads to pause (COMMIT_QUIET_MS). The caches that share one commit early when it presses (as
 * on their own bound: commitDue), the ones waiting to commit are woken when a block takes it over the
 * threshold, and a cache that adds a block beyond the whole bound waits for its writer.
 */
export class PendingWriteBudget {
  bytes = 0
  /** Caches whose commit is waiting: ended when the budget presses. */
  private readonly waiting = new Set<() => void>()
  constructor (readonly maxBytes: number) {
    if (!(maxBytes > 0)) throw new RangeError(`pending write budget must be > 0 bytes, got ${maxBytes}`)
  }

  /** Over the share at which a commit starts: 7/8 of the bound while a cache is being read, else half. */
  presses (beingRead: boolean): boolean {
    return this.bytes > (beingRead ? this.maxBytes * 7 / 8 : this.maxBytes / 2)
  }

  /** Registers a waiting commit's end; returns its removal. */
  onPress (end: () => void): () => void {
    this.waiting.add(end)
    return () => { this.waiting.delete(end) }
  }

  /** Ends every waiting commit: each of those caches commits now. */
  press (): void {
    for (const end of this.waiting) end()
  }
}
/**
 * Fetch rounds for one batch at most, and the backoff after a round that failed outright for a reason other
 * than NoSourceError (a source that fails without waiting: the peer layer off, a file error, a block no
 * peer served after many tries).
 */
const MAX_FETCH_ROUNDS = 64
const FETCH_RETRY_BASE_MS = 50
const FETCH_RETRY_MAX_MS = 2000
/** Blocks written per fdatasync. */
export const MAX_BLOCKS_PER_COMMIT = 256
/** Waits of one commit at most (each at least 1 ms; the time bound is MAX_COMMIT_DEFER_MS). */
const MAX_COMMIT_WAIT_ROUNDS = 1000
/**
 * A commit waits this long for more blocks to join it (unless the batch is full, writes are backing up, or a
 * flush asks for it). Verified blocks are served from memory meanwhile, so no read waits for it; what it buys:
 * a boot's reads arrive one at a time, and one fdatasync plus one presence write per block was about 7 % of a
 * receiving agent's CPU (npm run calibrate, --cpu-prof). A crash loses at most this much of fetched data,
 * which is fetched again: nothing is marked present before it is durable.
 */
export const COMMIT_DELAY_MS = 100
/**
 * While the image is being read (a VM's reads, a peer's: a boot wave), a commit waits until the reads have
 * paused this long, MAX_COMMIT_DEFER_MS at most, and while the blocks waiting stay under 7/8 of
 * maxPendingWriteBytes. Why: blocks are served from memory until their commit, and writing them to the page
 * cache during the wave competed with it. On this machine kind fresh page-cache pages cost about 4 ms per MiB
 * to fill (the host's first touch): the writes and their fdatasync were 10-11 % of the host agents' CPU in the
 * 8-host wave (perf). The work is the same; it moves to when the reads pause. The cost: a crash loses up to
 * this much more fetched data (fetched again; nothing is marked present before it is durable), and up to 7/8
 * of maxPendingWriteBytes per image stays in memory during a boot.
 */
export const COMMIT_QUIET_MS = 1000
/**
 * Longer than a boot wave: at 10 s the commit came down in the middle of the testbed's waves (12-20 s of reads
 * without a pause), and the wave paid for it: 5 interleaved pairs (2026-12-01) with 60 s, slowest host 14.61,
 * 14.04 -> 11.68, 13.16 s at 1 Gb/s and 21.10, 22.80, 23.14 -> 19.67, 21.08, 17.89 s at 100 Mb/s, the host
 * agents' CPU 7-21 % lower. Memory stays within the same bound (maxPendingWriteBytes, the agent's budget).
 */
export const MAX_COMMIT_DEFER_MS = 60_000
/**
 * Verified blocks go to the page cache with writeSync on the event loop, consecutive ones in one writev of at
 * most this many bytes: a thread-pool round trip per block (a futex wake, the worker, an eventfd back) cost
 * more than the copy. 8-host testbed wave at 1 Gb/s, interleaved pairs: the host agents' CPU 10.27 -> 9.67 s
 * on average in 3 pairs of this code (6.72 -> 6.38 s slowest, faster in 3 of 3) and 10.08 -> 9.72 s in 6 pairs
 * of a first version (lower in 4, equal in 1); in a one-client replay under strace, futex calls 4,109 -> 1,046.
 */
export const SYNC_WRITE_MAX_BYTES = 1024 * 1024
/**
 * A sync write that took longer than this (the kernel throttles a writer while the disk falls behind: pauses of
 * tens to hundreds of ms, or memory is short) stalls every VM's reads on the host: writes go back to the thread
 * pool for SYNC_WRITE_BACKOFF_MS. Not lower: on the loaded testbed a 128 KiB-1 MiB write took 11-19 ms now and
 * then (the process preempted mid-call), and at 10 ms most hosts fell back within the wave. The spell doubles
 * while writes stay slow (nextSyncWriteBackoffMs).
 */
export const DEFAULT_SLOW_SYNC_WRITE_MS = 50
export const SYNC_WRITE_BACKOFF_MS = 10_000
/** The backoff doubles while sync writes stay slow (see nextSyncWriteBackoffMs), up to this. */
export const MAX_SYNC_WRITE_BACKOFF_MS = 320_000

/**
 * The thread-pool spell after a slow sync write: SYNC_WRITE_BACKOFF_MS, or twice the last one when the last
 * slow write came within twice that spell (the first sync write after it was slow again: a disk that is slow
 * all the time, network storage say, would otherwise stall the event loop once every 10 s), up to
 * MAX_SYNC_WRITE_BACKOFF_MS. A disk that is slow now and then starts again from SYNC_WRITE_BACKOFF_MS.
 */
export function nextSyncWriteBackoffMs (lastBackoffMs: number, lastSlowAtMs: number, nowMs: number): number {
  if (nowMs - lastSlowAtMs > 2 * lastBackoffMs) return SYNC_WRITE_BACKOFF_MS
  return Math.min(MAX_SYNC_WRITE_BACKOFF_MS, 2 * lastBackoffMs)
}
/**
 * Reads of cached data up to this size use readSync on the event loop: a thread-pool round trip costs more
 * than a page-cache copy of 64 KiB (measured 2.5x the IOPS at 4 KiB QD32). The price is that a read that
 * misses the page cache stalls the loop for one disk read; larger reads always go to the thread pool.
 */
export const DEFAULT_SYNC_READ_MAX_BYTES = 64 * 1024
/** A read that overlaps evictions this many times fails (each overlap means it may have read a punched hole). */
const MAX_READ_ATTEMPTS_UNDER_EVICTION = 3
/** Verified blocks whose write failed (full or failing disk), kept in memory for the reads that wait on them. */
export const DEFAULT_MAX_SPILL_BYTES = 32 * 1024 * 1024
/** Spilled blocks go back to the writer after this (space may be back), doubling while writes keep failing. */
const SPILL_RETRY_MIN_MS = 1000
const SPILL_RETRY_MAX_MS = 30_000

export interface Logger {
  info: (message: string, fields?: Record<string, unknown>) => void
  warn: (message: string, fields?: Record<string, unknown>) => void
  error: (message: string, fields?: Record<string, unknown>) => void
}

export const silentLogger: Logger = { info () {}, warn () {}, error () {} }

export interface BlockCacheInit {
  manifest: Manifest
  /** Path of the sparse data file. Created (at the image's size) when missing. */
  path: string
  presence: PresenceStore
  source: BlockSource
  logger?: Logger
  fetchTimeoutMs?: number
  maxFetchAttempts?: number
  maxBlocksPerFetch?: number
  maxPendingWriteBytes?: number
  /** Shared by every cache of the agent (ImageRegistry): the bound over all of them. Default: one of its own. */
  pendingWrites?: PendingWriteBudget
  /** 0 disables readSync. */
  syncReadMaxBytes?: number
  /** A sync write slower than this sends writes to the thread pool for a while (DEFAULT_SLOW_SYNC_WRITE_MS). */
  slowSyncWriteMs?: number
  /** Runs a background scrub (scrub.ts) while the cache is open; off when undefined. */
  scrub?: ScrubOptions
  maxSpillBytes?: number
  /** Commits wait for reads to pause this long (COMMIT_QUIET_MS; 0: they do not wait for reads). */
  commitQuietMs?: number
  /** ... and at most this long (MAX_COMMIT_DEFER_MS). */
  maxCommitDeferMs?: number
  /** The clock of the commit deferral and of the idle time the scrub waits for (ms; default performance.now). */
  nowMs?: () => number
}

export interface CacheReadOptions {
  /** Where a result read or assembled goes (a buffer pool); default a fresh Buffer. */
  allocate?: (length: number) => Buffer
}

export interface CacheStats {
  sizeBytes: number
  blockCount: number
  presentBlocks: number
  presentBytes: number
  /** Blocks a read found present (or in flight to disk). */
  hitBlocks: number
  /** Blocks a read had to wait for. */
  missBlocks: number
  fetchedBlocks: number
  fetchedBytes: number
  /** Of fetchedBytes, what prefetch asked for (the rest a reader waited for). */
  prefetchedBytes: number
  /** Blocks that failed verification: from a source, or read back from this host's disk. */
  corruptBlocks: number
  /** Of corruptBlocks, those read back from this host's disk (bit rot): dropped and fetched again. */
  corruptCachedBlocks: number
  /** Stored blocks verified since the start (first reads, peer reads and the scrub). */
  checkedBlocks: number
  /** Stored blocks not yet verified since the start. */
  uncheckedBlocks: number
  /** Verified blocks whose write to disk failed (ENOSPC, EIO): served from memory, not kept. */
  writeFailedBlocks: number
  /** Sync writes that took over slowSyncWriteMs (each sent writes to the thread pool for a spell: nextSyncWriteBackoffMs). */
  slowSyncWrites: number
  /** Reads served from the memory spill because the disk would not take the blocks. */
  uncachedReadBlocks: number
  readRequests: number
  readBytes: number
}

interface Waiter {
  promise: Promise<void>
  resolve: () => void
  reject: (err: Error) => void
}

export type BlocksAddedListener = (blockIndexes: readonly number[]) => void

/** Frees the disk space of a byte range of the cache file (the range reads as zeros afterwards). */
export type PunchHole = (path: string, offset: number, length: number, signal?: AbortSignal) => Promise<void>

/** `fallocate --punch-hole` (util-linux): frees the range, keeps the file size. */
export const fallocatePunchHole: PunchHole = async (path, offset, length, signal) => {
  // Loaded at first use (as in snapshots.ts): evictions are rare, every start would pay for it.
  const { execa } = await import('execa')
  await execa('fallocate', ['--punch-hole', '--keep-size', '--offset', String(offset), '--length', String(length), path], {
    timeout: EVICT_PUNCH_TIMEOUT_MS, cancelSignal: signal
  })
}

/** One hole punch (one fallocate) may take this long. */
export const EVICT_PUNCH_TIMEOUT_MS = 30_000

export interface EvictResult {
  /** Blocks no longer present (their disk space freed, unless the punch failed and zeros were written). */
  evicted: number[]
  /** Blocks left alone: not durable, in flight, waiting for their commit, or zero blocks (no disk). */
  skipped: number[]
  freedBytes: number
}

export class BlockCache implements BlockStore {
  readonly manifest: Manifest
  private readonly path: string
  private readonly presence: PresenceStore
  private readonly source: BlockSource
  private readonly logger: Logger
  private readonly fetchTimeoutMs: number
  private readonly maxFetchAttempts: number
  private readonly maxBlocksPerFetch: number
  private readonly maxPendingWriteBytes: number
  private readonly syncReadMaxBytes: number
  private readonly slowSyncWriteMs: number
  private readonly commitQuietMs: number
  private readonly maxCommitDeferMs: number
  private readonly nowMs: () => number
  /** Writes go through the thread pool until then (performance.now() ms): a sync write was slow. */
  private asyncWritesUntilMs = -Infinity
  /** The last slow sync write (performance.now() ms) and the spell it started (nextSyncWriteBackoffMs). */
  private lastSlowSyncWriteAtMs = -Infinity
  private syncWriteBackoffMs = SYNC_WRITE_BACKOFF_MS
  private handle!: FileHandle
  /** Verified blocks: durable ones, the ones waiting for their commit, and zero blocks. */
  private readonly verified: Bitmap
  /** Verified, flushed and recorded blocks (zero blocks included). */
  private readonly durable: Bitmap
  /** Verified blocks not yet durable. */
  private readonly pending = new Map<number, Uint8Array>()
  private pendingBytes = 0
  private readonly pendingWrites: PendingWriteBudget
  private writeQueue: number[] = []
  private writer: Promise<void> | undefined
  /** Ends the writer's wait for a fuller commit (set while it waits). */
  private endCommitWait: (() => void) | undefined
  /** flush() calls in progress: commits do not wait for fuller batches meanwhile. */
  private flushing = 0
  private readonly inflight = new Map<number, Waiter>()
  private readonly listeners = new Set<BlocksAddedListener>()
  private readonly closeController = new AbortController()
  private closed = false
  /** Reads (not prefetch) waiting for a source right now. */
  private demandWaiting = 0
  /** Bumped by every evict(): a disk read that overlapped one is done again (it may have read a punched hole). */
  private evictEpoch = 0
  /** Holes being punched: the writer waits, so a block fetched again is never written under a punch. */
  private punching: Promise<void> | undefined
  private evictChain: Promise<unknown> = Promise.resolve()
  private readonly counters = {
    hitBlocks: 0,
    missBlocks: 0,
    fetchedBlocks: 0,
    fetchedBytes: 0,
    prefetchedBytes: 0,
    corruptBlocks: 0,
    corruptCachedBlocks: 0,
    checkedBlocks: 0,
    writeFailedBlocks: 0,
    slowSyncWrites: 0,
    uncachedReadBlocks: 0,
    readRequests: 0,
    readBytes: 0
  }

  /** Stored blocks (present at open) not verified since: checked on first read, by the scrub, or for a peer. */
  private readonly unchecked: Bitmap
  /** Checks under way, shared by every reader of the block. */
  private readonly checking = new Map<number, Promise<ScrubResult>>()
  /** Verified blocks the disk would not take (insertion order = age). */
  private readonly spill = new Map<number, Uint8Array>()
  private spillBytes = 0
  private spillRetryMs = SPILL_RETRY_MIN_MS
  private spillTimer: NodeJS.Timeout | undefined
  private readonly maxSpillBytes: number
  /** The scrub counts the open as a read: it waits one idle period, so it does not compete with a daemon's start. */
  private readonly openedAtMs: number
  /** The last read by a VM or a peer: commits wait while reads go on (COMMIT_QUIET_MS), the scrub until idle. */
  private readAtMs = -Infinity
  private scrubber: Scrubber | undefined

  private constructor (init: BlockCacheInit) {
    this.manifest = init.manifest
    this.path = init.path
    this.presence = init.presence
    this.source = init.source
    this.logger = init.logger ?? silentLogger
    this.fetchTimeoutMs = init.fetchTimeoutMs ?? DEFAULT_FETCH_TIMEOUT_MS
    this.maxFetchAttempts = init.maxFetchAttempts ?? DEFAULT_MAX_FETCH_ATTEMPTS
    this.maxBlocksPerFetch = init.maxBlocksPerFetch ?? DEFAULT_MAX_BLOCKS_PER_FETCH
    this.maxPendingWriteBytes = init.maxPendingWriteBytes ?? DEFAULT_MAX_PENDING_WRITE_BYTES
    this.pendingWrites = init.pendingWrites ?? new PendingWriteBudget(this.maxPendingWriteBytes)
    this.syncReadMaxBytes = init.syncReadMaxBytes ?? DEFAULT_SYNC_READ_MAX_BYTES
    this.slowSyncWriteMs = init.slowSyncWriteMs ?? DEFAULT_SLOW_SYNC_WRITE_MS
    this.commitQuietMs = init.commitQuietMs ?? COMMIT_QUIET_MS
    this.maxCommitDeferMs = init.maxCommitDeferMs ?? MAX_COMMIT_DEFER_MS
    this.nowMs = init.nowMs ?? (() => performance.now())
    this.openedAtMs = this.nowMs()
    this.verified = new Bitmap(init.manifest.blockCount)
    this.durable = new Bitmap(init.manifest.blockCount)
    this.unchecked = new Bitmap(init.manifest.blockCount)
    this.maxSpillBytes = init.maxSpillBytes ?? DEFAULT_MAX_SPILL_BYTES
    // Every fetch batch in flight follows it (deadline.ts), bounded by the reads and the prefetch window in
    // flight; node's default of 10 warned (MaxListenersExceededWarning) whenever a VM's reads outran the source.
    setMaxListeners(Infinity, this.closeController.signal)
  }

  static async open (init: BlockCacheInit): Promise<BlockCache> {
    const cache = new BlockCache(init)
    await cache.load()
    if (init.scrub !== undefined) cache.startScrub(init.scrub)
    return cache
  }

  private async load (): Promise<void> {
    // Opened (created if missing, never truncated here) in one call, sized with synchronous calls: a new image's
    // first open is on instance.create's path, where each thread-pool round trip waited 5-100 ms for a loaded
    // 2-core machine to run this process again (8-host testbed wave).
    const handle = await open(this.path, constants.O_RDWR | constants.O_CREAT, 0o640)
    this.handle = handle
    const { size } = fstatSync(handle.fd)
    let madeNow = false
    if (size !== this.manifest.sizeBytes) {
      // A new file, or one from something else: nothing in it can be trusted.
      ftruncateSync(handle.fd, 0)
      ftruncateSync(handle.fd, this.manifest.sizeBytes)
      await this.presence.clear()
      madeNow = true
    } else {
      this.durable.or(await this.presence.load(this.manifest.blockCount))
    }
    this.durable.or(this.manifest.zeroBlocks)
    this.verified.or(this.durable.bits)
    // Only what was on disk before this open can have rotted. A file made just now is all holes: its zero blocks
    // read back as zeros, so they are not checked (the scrub of a 1 GiB image's ~10,000 zero blocks was 625 MiB
    // of reads and zero scans, about 40 % of an agent's CPU while its VM thinks, during the first boot).
    if (!madeNow) this.unchecked.or(this.durable.bits)
  }

  // ---- BlockStore: what peers may be served ----

  has (blockIndex: number): boolean {
    return this.verified.get(blockIndex)
  }

  presentCount (): number {
    return this.verified.count()
  }

  /** Blocks written and recorded (they survive a crash); presentCount() also counts those waiting for their commit. */
  durableCount (): number {
    return this.durable.count()
  }

  presentBitmap (): Uint8Array {
    return this.verified.toBytes()
  }

  isComplete (): boolean {
    return this.verified.count() === this.manifest.blockCount
  }

  /** True when the block is on disk and recorded: it survives a crash. */
  isDurable (blockIndex: number): boolean {
    return this.durable.get(blockIndex)
  }

  async readBlock (blockIndex: number, options: { signal?: AbortSignal } = {}): Promise<Uint8Array> {
    // Serving peers is work too: the background scrub waits until this agent is idle for them as well.
    this.readAtMs = this.nowMs()
    for (let attempt = 0; ; attempt++) {
      this.assertOpen()
      options.signal?.throwIfAborted()
      if (!this.verified.get(blockIndex)) throw new BlockNotPresentError(`block ${blockIndex} of ${this.manifest.imageId} is not present`)
      const length = blockLength(this.manifest, blockIndex)
      if (isZeroBlock(this.manifest, blockIndex)) return new Uint8Array(length)
      const waiting = this.pending.get(blockIndex)
      if (waiting !== undefined) return waiting
      const epoch = this.evictEpoch
      const data = Buffer.allocUnsafe(length)
      // A relay reads every block it sends: like a VM's read, a block within syncReadMaxBytes is read on the loop.
      if (length <= this.syncReadMaxBytes) this.readFullySync(data, blockIndex * this.manifest.blockSizeBytes)
      else await this.readFully(data, blockIndex * this.manifest.blockSizeBytes)
      if (epoch === this.evictEpoch) {
        // Whatever goes to a peer is verified: SHA-256 runs at about 900 MiB per CPU-second here, a fifth of
        // what sending the block over noise+yamux costs.
        if (verifyBlock(this.manifest, blockIndex, data)) {
          if (this.unchecked.get(blockIndex)) { this.unchecked.clear(blockIndex); this.counters.checkedBlocks++ }
          return data
        }
        await this.dropCorrupt(blockIndex, 'peer read')
        this.refetch(blockIndex)
        throw new BlockNotPresentError(`block ${blockIndex} of ${this.manifest.imageId} failed verification on disk`)
      }
      if (attempt >= MAX_READ_ATTEMPTS_UNDER_EVICTION - 1) throw new BlockNotPresentError(`block ${blockIndex} of ${this.manifest.imageId} was being evicted`)
    }
  }

  onBlocksAdded (listener: BlocksAddedListener): () => void {
    this.listeners.add(listener)
    return () => { this.listeners.delete(listener) }
  }

  // ---- reads for the local hypervisor ----

  /** True when the block can be read without waiting for a source (the same as has()). */
  hasLocal (blockIndex: number): boolean {
    return this.verified.get(blockIndex)
  }

  /**
   * Reads `length` bytes at `offset`, fetching missing blocks first. The result may be a view of a block the
   * cache holds: read it, do not write to it.
   */
  async read (offset: number, length: number, signal: AbortSignal, options: CacheReadOptions = {}): Promise<Uint8Array> {
    for (let attempt = 0; ; attempt++) {
      const epoch = this.evictEpoch
      try {
        const out = await this.readOnce(offset, length, signal, options)
        if (epoch === this.evictEpoch) return out
      } catch (err) {
        if (epoch === this.evictEpoch || !(err instanceof BlockNotPresentError)) throw err
      }
      // An eviction ran while we read from disk: read again (bounded), so no punched hole is ever returned.
      if (attempt >= MAX_READ_ATTEMPTS_UNDER_EVICTION - 1) throw new BlockNotPresentError(`read at ${offset} of ${this.manifest.imageId} overlapped evictions ${MAX_READ_ATTEMPTS_UNDER_EVICTION} times`)
    }
  }

  private async readOnce (offset: number, length: number, signal: AbortSignal, options: CacheReadOptions): Promise<Uint8Array> {
    this.assertOpen()
    const { sizeBytes, blockSizeBytes } = this.manifest
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length <= 0 || offset + length > sizeBytes) {
      throw new ReadRangeError(`read of ${length} bytes at ${offset} is outside the image (${sizeBytes} bytes)`)
    }
    this.counters.readRequests++
    this.counters.readBytes += length
    this.readAtMs = this.nowMs()
    const first = Math.floor(offset / blockSizeBytes)
    const last = Math.floor((offset + length - 1) / blockSizeBytes)
    if (this.unchecked.count() > 0) await this.checkRange(first, last)
    let allPresent = true
    for (let i = first; i <= last; i++) {
      if (!this.durable.get(i)) { allPresent = false; break }
    }
    if (allPresent) {
      this.counters.hitBlocks += last - first + 1
      const out = options.allocate?.(length) ?? Buffer.allocUnsafe(length)
      if (length <= this.syncReadMaxBytes) this.readFullySync(out, offset)
      else await this.readFully(out, offset)
      return out
    }
    const indexes: number[] = []
    for (let i = first; i <= last; i++) if (!this.spill.has(i)) indexes.push(i)
    await this.ensure(indexes, { signal, priority: 'demand' })
    // Within one block still waiting for its commit (a boot wave's reads, mostly): a view of it, no copy. Blocks
    // are never written in place, and a pool does not take back a buffer it did not give out.
    const single = first === last ? this.pending.get(first) : undefined
    if (single !== undefined && offset + length <= first * blockSizeBytes + single.byteLength) {
      const at = offset - first * blockSizeBytes
      return single.subarray(at, at + length)
    }
    // Else assembled in a buffer from the caller's pool, if it has one (no fresh pages to fault in per read).
    const out = options.allocate?.(length) ?? Buffer.allocUnsafe(length)
    // Assemble: runs of durable blocks come from the file in one read each; blocks still waiting for their
    // commit come from memory.
    let runStart = -1
    const flushRun = async (end: number): Promise<void> => {
      if (runStart < 0) return
      const from = Math.max(offset, runStart * blockSizeBytes)
      const to = Math.min(offset + length, end * blockSizeBytes)
      await this.readFully(out.subarray(from - offset, to - offset), from)
      runStart = -1
    }
    for (let i = first; i <= last; i++) {
      let data = this.pending.get(i)
      if (data === undefined && !this.durable.get(i)) {
        data = this.spill.get(i)
        if (data !== undefined) {
          this.counters.uncachedReadBlocks++
          // Read again: worth another write (space may be back); spilled again if the disk still refuses it.
          if (this.requeueSpilled(i)) { this.startWriter(); this.announce([i]) }
        }
      }
      if (data === undefined) {
        if (!this.durable.get(i)) throw new BlockNotPresentError(`block ${i} of ${this.manifest.imageId} vanished while read`)
        if (runStart < 0) runStart = i
        continue
      }
      await flushRun(i)
      const blockStart = i * blockSizeBytes
      const from = Math.max(offset, blockStart)
      const to = Math.min(offset + length, blockStart + data.byteLength)
      out.set(data.subarray(from - blockStart, to - blockStart), from - offset)
    }
    await flushRun(last + 1)
    return out
  }

  /**
   * Makes the given blocks local, fetching the missing ones from the source (one fetch per block, however
   * many callers ask). Resolves when every block is verified; rejects when one cannot be had.
   */
  async ensure (blockIndexes: readonly number[], options: { signal: AbortSignal, priority?: FetchPriority }): Promise<void> {
    this.assertOpen()
    options.signal.throwIfAborted()
    const waits: Array<Promise<void>> = []
    const toFetch: number[] = []
    for (const index of blockIndexes) {
      if (!Number.isInteger(index) || index < 0 || index >= this.manifest.blockCount) throw new ReadRangeError(`no block ${index} in ${this.manifest.imageId}`)
      if (this.hasLocal(index)) {
        if (options.priority !== 'prefetch') this.counters.hitBlocks++
        continue
      }
      if (options.priority !== 'prefetch') this.counters.missBlocks++
      let waiter = this.inflight.get(index)
      if (waiter === undefined) {
        waiter = makeWaiter()
        this.inflight.set(index, waiter)
        toFetch.push(index)
      }
      waits.push(waiter.promise)
    }
    for (let i = 0; i < toFetch.length; i += this.maxBlocksPerFetch) {
      void this.fetchBatch(toFetch.slice(i, i + this.maxBlocksPerFetch), options.priority ?? 'demand')
    }
    if (waits.length === 0) return
    const demand = options.priority !== 'prefetch'
    if (demand) this.demandWaiting++
    try {
      await raceAbort(Promise.all(waits), options.signal)
    } finally {
      if (demand) this.demandWaiting--
    }
  }

  /** Reads waiting for blocks from a source: prefetch holds back while this is above zero. */
  pendingDemandReads (): number {
    return this.demandWaiting
  }

  private async fetchBatch (indexes: number[], priority: FetchPriority): Promise<void> {
    // The fetch is shared by every reader of these blocks, so it is bounded by the cache's own lifetime and a
    // timeout, not by any one reader's signal.
    const bound = deadline(this.closeController.signal, this.fetchTimeoutMs, 'block fetch')
    try {
      await this.fetchRounds(indexes, priority, bound.signal)
    } finally {
      bound.dispose()
    }
  }

  private async fetchRounds (indexes: number[], priority: FetchPriority, signal: AbortSignal): Promise<void> {
    let remaining = indexes
    let lastError: Error | undefined
    // Two bounds: rounds in which a source sent corrupt data (maxFetchAttempts: a block nobody serves intact
    // fails the read), and the fetch timeout: the tree heals within a few heartbeats, and a VM's read should
    // outlast that rather than see EIO. Waiting for a source is the source's job (the peer source waits for
    // adverts and connections and is woken by them): after a NoSourceError it has waited already, so the next
    // round starts at once; a backoff here would only delay the read past the source's return (issue 12).
    // Other outright failures back off, so a source that fails at once cannot spin this loop.
    let corruptRounds = 0
    let failedRounds = 0
    for (let attempt = 0; attempt < MAX_FETCH_ROUNDS && corruptRounds < this.maxFetchAttempts && remaining.length > 0 && !signal.aborted; attempt++) {
      const wanted = new Set(remaining)
      let corrupt = false
      const handled = new Set<FetchedBlock>()
      // Verified and stored one at a time, each announced at once: a reader (or a child behind a relay)
      // waiting for one block does not wait for the rest of its batch (cut-through).
      const handle = async (block: FetchedBlock): Promise<void> => {
        if (handled.has(block) || !wanted.has(block.index)) return
        handled.add(block)
        if (!verifyBlock(this.manifest, block.index, block.data)) {
          this.counters.corruptBlocks++
          lastError = new BlockVerificationError(`block ${block.index} of ${this.manifest.imageId} from ${block.peer ?? 'source'} does not match the manifest`, block.index)
          this.logger.warn('corrupt block', { image: this.manifest.imageId, block: block.index, peer: block.peer })
          this.source.reportCorrupt?.(this.manifest, block.index, block.peer)
          corrupt = true
          return
        }
        wanted.delete(block.index)
        if (await this.accept(block.index, block.data, priority)) this.announce([block.index])
      }
      let streamed: Promise<void> = Promise.resolve()
      try {
        const blocks = await this.source.fetch(this.manifest, remaining, {
          signal,
          priority,
          onBlock: block => { streamed = streamed.then(async () => { await handle(block) }) }
        })
        await streamed
        for (const block of blocks) await handle(block)
      } catch (err) {
        lastError = err as Error
        if (signal.aborted) break
        this.logger.warn('fetch failed', { image: this.manifest.imageId, blocks: remaining.length, attempt, error: lastError.message })
        if (!(err instanceof NoSourceError)) {
          failedRounds++
          await delay(Math.min(FETCH_RETRY_MAX_MS, FETCH_RETRY_BASE_MS * 2 ** Math.min(failedRounds - 1, 10)), undefined, { signal }).catch(() => {})
        }
      }
      if (corrupt) corruptRounds++
      remaining = [...wanted]
    }
    if (remaining.length === 0) return
    const error = this.closed
      ? new CacheClosedError('cache closed')
      : signal.aborted
        ? new FetchTimeoutError(`fetching ${remaining.length} blocks of ${this.manifest.imageId} timed out after ${this.fetchTimeoutMs} ms`)
        : (lastError ?? new Error('source returned no data'))
    for (const index of remaining) {
      const waiter = this.inflight.get(index)
      this.inflight.delete(index)
      waiter?.reject(error)
    }
  }

  /** Stores a verified block: servable at once, durable at the next group commit. False if it was known. */
  private async accept (index: number, data: Uint8Array, priority: FetchPriority = 'demand'): Promise<boolean> {
    if (this.verified.get(index)) return false
    this.verified.set(index)
    this.pending.set(index, data)
    this.addPending(data.byteLength)
    this.counters.fetchedBlocks++
    this.counters.fetchedBytes += data.byteLength
    if (priority === 'prefetch') this.counters.prefetchedBytes += data.byteLength
    const waiter = this.inflight.get(index)
    this.inflight.delete(index)
    waiter?.resolve()
    this.writeQueue.push(index)
    this.startWriter()
    // Over the agent's budget, every waiting commit is woken (this one too); else this one when it is due.
    const beingRead = this.beingRead()
    if (this.pendingWrites.presses(beingRead)) this.pendingWrites.press()
    else if (this.commitDue(beingRead)) this.endCommitWait?.()
    if (this.pendingBytes > this.maxPendingWriteBytes || this.pendingWrites.bytes > this.pendingWrites.maxBytes) await this.writer
    return true
  }

  /** Bytes waiting for their commit, here and in the agent's budget. */
  private addPending (bytes: number): void {
    this.pendingBytes += bytes
    this.pendingWrites.bytes += bytes
  }

  private announce (blocks: number[]): void {
    if (blocks.length === 0) return
    for (const listener of this.listeners) {
      try {
        listener(blocks)
      } catch (err) {
        this.logger.warn('blocks-added listener failed', { error: (err as Error).message })
      }
    }
  }

  /** Stores a block already known to be good (the origin's own image file, read at registration). */
  async putVerified (index: number, data: Uint8Array): Promise<void> {
    if (!verifyBlock(this.manifest, index, data)) throw new BlockVerificationError(`block ${index} does not match the manifest`, index)
    if (await this.accept(index, data)) this.announce([index])
  }

  /** True while the image is being read: commits wait (COMMIT_QUIET_MS). */
  private beingRead (): boolean {
    return this.nowMs() - this.readAtMs < this.commitQuietMs
  }

  /** A commit should start now: a flush asks, a batch is full, or the blocks waiting press on memory. */
  private commitDue (beingRead = this.beingRead()): boolean {
    if (this.flushing > 0 || this.closed) return true
    if (this.pendingWrites.presses(beingRead)) return true
    if (beingRead) return this.pendingBytes > this.maxPendingWriteBytes * 7 / 8
    return this.writeQueue.length >= MAX_BLOCKS_PER_COMMIT || this.pendingBytes > this.maxPendingWriteBytes / 2
  }

  /**
   * Waits COMMIT_DELAY_MS for a fuller batch, then, while the image is being read, until the reads pause
   * (COMMIT_QUIET_MS), MAX_COMMIT_DEFER_MS in all; flush() and back-pressure (commitDue) end the wait at once.
   */
  private async gatherCommit (): Promise<void> {
    const startMs = this.nowMs()
    let waitMs = COMMIT_DELAY_MS
    for (let round = 0; round < MAX_COMMIT_WAIT_ROUNDS; round++) {
      if (this.commitDue()) return
      let leavePress = (): void => {}
      const ended = await new Promise<boolean>(resolve => {
        const timer = setTimeout(() => { this.endCommitWait = undefined; resolve(false) }, waitMs)
        this.endCommitWait = () => { clearTimeout(timer); this.endCommitWait = undefined; resolve(true) }
        leavePress = this.pendingWrites.onPress(this.endCommitWait)
      })
      leavePress()
      const nowMs = this.nowMs()
      const quietForMs = nowMs - this.readAtMs
      const waitedMs = nowMs - startMs
      if (ended || quietForMs >= this.commitQuietMs || waitedMs >= this.maxCommitDeferMs) return
      waitMs = Math.max(1, Math.min(this.commitQuietMs - quietForMs, this.maxCommitDeferMs - waitedMs))
    }
  }

  private startWriter (): void {
    if (this.writer !== undefined) return
    this.writer = this.runWriter().finally(() => { this.writer = undefined })
  }

  private async runWriter (): Promise<void> {
    while (this.writeQueue.length > 0 && !this.closed) {
      await this.gatherCommit()
      while (this.punching !== undefined) await this.punching
      const batch = this.writeQueue.splice(0, MAX_BLOCKS_PER_COMMIT).sort((a, b) => a - b)
      try {
        // Runs of consecutive blocks go down in one writev each (a boot reads much of its image in order).
        let run: Uint8Array[] = []
        let runStart = -1
        let runBytes = 0
        for (const index of batch) {
          const data = this.pending.get(index)
          if (data === undefined) continue
          if (run.length > 0 && (index !== runStart + run.length || runBytes + data.byteLength > SYNC_WRITE_MAX_BYTES)) {
            await this.writeRun(run, runStart * this.manifest.blockSizeBytes)
            run = []
            runBytes = 0
          }
          if (run.length === 0) runStart = index
          run.push(data)
          runBytes += data.byteLength
        }
        if (run.length > 0) await this.writeRun(run, runStart * this.manifest.blockSizeBytes)
        await this.handle.datasync()
        for (const index of batch) this.durable.set(index)
        await this.presence.save(this.durable, batch)
      } catch (err) {
        // Nothing is marked present that was not flushed. The blocks are dropped (a later read fetches them
        // again) rather than retried here, so a failing disk cannot make the writer loop; their verified bytes
        // go to the spill so that reads waiting on them still complete.
        this.logger.error('cache write failed', { image: this.manifest.imageId, blocks: batch.length, code: (err as NodeJS.ErrnoException).code, error: (err as Error).message })
        this.counters.writeFailedBlocks += batch.length
        this.spillRetryMs = Math.min(SPILL_RETRY_MAX_MS, this.spillRetryMs * 2)
        for (const index of batch) {
          this.durable.clear(index)
          this.verified.clear(index)
          this.toSpill(index)
          this.dropPending(index)
        }
        this.scheduleSpillRetry()
        continue
      }
      this.spillRetryMs = SPILL_RETRY_MIN_MS
      for (const index of batch) { this.dropPending(index); this.fromSpill(index) }
    }
  }

  private dropPending (index: number): void {
    const data = this.pending.get(index)
    if (data === undefined) return
    this.pending.delete(index)
    this.addPending(-data.byteLength)
  }

  /** Waits until every verified block is durable. */
  async flush (): Promise<void> {
    this.flushing++
    try {
      while (this.writer !== undefined) {
        this.endCommitWait?.()
        await this.writer
      }
    } finally {
      this.flushing--
    }
  }

  /**
   * Evicts blocks: they stop being present (not served, read again from a source on demand) and their disk
   * space is freed. Order, for crash safety: clear the bits and persist the presence change, then punch the
   * holes; so after a crash no block recorded present is a hole. Blocks that are not durable yet (waiting
   * for their commit), in flight, or zero blocks are skipped. Blocks fetched again meanwhile are written only
   * after the punch (the writer waits). The caller decides what may go (see src/prefetch/evict.ts): evicting a
   * block a VM needs turns its local read into a network fetch.
   */
  async evict (blockIndexes: readonly number[], options: { signal?: AbortSignal, punchHole?: PunchHole } = {}): Promise<EvictResult> {
    const run = this.evictChain.then(async () => await this.evictNow(blockIndexes, options))
    this.evictChain = run.catch(() => {})
    return await run
  }

  private async evictNow (blockIndexes: readonly number[], options: { signal?: AbortSignal, punchHole?: PunchHole }): Promise<EvictResult> {
    this.assertOpen()
    options.signal?.throwIfAborted()
    const evicted: number[] = []
    const skipped: number[] = []
    const seen = new Set<number>()
    for (const index of blockIndexes) {
      if (!Number.isInteger(index) || index < 0 || index >= this.manifest.blockCount) throw new ReadRangeError(`no block ${index} in ${this.manifest.imageId}`)
      if (seen.has(index)) continue
      seen.add(index)
      if (!this.durable.get(index) || isZeroBlock(this.manifest, index) || this.pending.has(index) || this.inflight.has(index)) skipped.push(index)
      else evicted.push(index)
    }
    if (evicted.length === 0) return { evicted, skipped, freedBytes: 0 }
    evicted.sort((a, b) => a - b)
    this.evictEpoch++
    for (const index of evicted) { this.verified.clear(index); this.durable.clear(index) }
    try {
      await this.presence.save(this.durable, evicted)
    } catch (err) {
      // Nothing was punched: the blocks are still on disk and still recorded; keep them.
      for (const index of evicted) { this.verified.set(index); this.durable.set(index) }
      throw err
    }
    const punchHole = options.punchHole ?? fallocatePunchHole
    const { blockSizeBytes } = this.manifest
    let freedBytes = 0
    const punch = (async () => {
      for (let i = 0; i < evicted.length;) {
        let j = i
        while (j + 1 < evicted.length && evicted[j + 1] === evicted[j] + 1) j++
        const offset = evicted[i] * blockSizeBytes
        const length = (evicted[j] - evicted[i]) * blockSizeBytes + blockLength(this.manifest, evicted[j])
        try {
          await punchHole(this.path, offset, length, options.signal)
          freedBytes += length
        } catch (err) {
          // No hole punching here (filesystem, tool): zeros keep the disk use but never old data marked absent.
          this.logger.warn('hole punch failed; writing zeros', { image: this.manifest.imageId, offset, length, error: (err as Error).message })
          await this.writeFully(new Uint8Array(length), offset)
        }
        i = j + 1
      }
    })()
    const guarded: Promise<void> = punch.catch(() => {}).finally(() => { if (this.punching === guarded) this.punching = undefined })
    this.punching = guarded
    await punch
    return { evicted, skipped, freedBytes }
  }

  stats (): CacheStats {
    const presentBlocks = this.verified.count()
    let presentBytes = presentBlocks * this.manifest.blockSizeBytes
    const lastIndex = this.manifest.blockCount - 1
    if (this.verified.get(lastIndex)) presentBytes -= this.manifest.blockSizeBytes - blockLength(this.manifest, lastIndex)
    return { sizeBytes: this.manifest.sizeBytes, blockCount: this.manifest.blockCount, presentBlocks, presentBytes, ...this.counters, uncheckedBlocks: this.unchecked.count() }
  }

  async close (): Promise<void> {
    if (this.closed) return
    await this.scrubber?.stop()
    clearTimeout(this.spillTimer)
    await this.flush()
    this.closed = true
    // What a failed writer left (spilled or not) no longer counts against the agent's budget.
    this.addPending(-this.pendingBytes)
    this.pending.clear()
    this.closeController.abort(new CacheClosedError('cache closed'))
    for (const [, waiter] of this.inflight) waiter.reject(new CacheClosedError('cache closed'))
    this.inflight.clear()
    await this.handle.close()
  }

  // ---- integrity: checks of stored blocks, the scrub, the spill ----

  /** Starts the background scrub (idempotent); close() stops it. */
  startScrub (options: ScrubOptions = {}): Scrubber {
    let scrubScratch: Buffer | undefined
    this.scrubber ??= startScrubber({
      blockCount: this.manifest.blockCount,
      idle: () => this.demandWaiting === 0 && this.nowMs() - Math.max(this.openedAtMs, this.readAtMs) >= SCRUB_IDLE_AFTER_MS,
      scrubBlock: async (index, { all, signal }) => {
        signal.throwIfAborted()
        if (this.closed) throw new CacheClosedError(`cache of ${this.manifest.imageId} is closed`)
        if (!all && !this.unchecked.get(index)) return { result: 'skipped', bytes: 0 }
        // One buffer for the whole scrub (it checks one block at a time): a first pass reads every stored block,
        // holes included, and a fresh buffer each made garbage collection most of an idle agent's CPU.
        scrubScratch ??= Buffer.allocUnsafe(this.manifest.blockSizeBytes)
        const result = await this.checkStored(index, scrubScratch)
        if (result === 'corrupt') this.refetch(index)
        return { result, bytes: result === 'skipped' ? 0 : blockLength(this.manifest, index) }
      }
    }, options, err => { if (!this.closed) this.logger.warn('scrub pass failed', { image: this.manifest.imageId, error: err.message }) })
    return this.scrubber
  }

  /** Verifies every not-yet-checked stored block of a read range before it is read from disk. */
  private async checkRange (first: number, last: number): Promise<void> {
    const checks: Array<Promise<ScrubResult>> = []
    for (let i = first; i <= last; i++) if (this.unchecked.get(i)) checks.push(this.checkStored(i))
    if (checks.length === 0) return
    await Promise.all(checks)
    for (let i = first; i <= last; i++) {
      // Only when evictions kept overlapping the check: read() tries again.
      if (this.unchecked.get(i) && this.durable.get(i)) throw new BlockNotPresentError(`block ${i} of ${this.manifest.imageId} could not be checked`)
    }
  }

  /** Reads a stored block back and verifies it (one check per block at a time, shared). */
  private async checkStored (index: number, scratch?: Buffer): Promise<ScrubResult> {
    const shared = this.checking.get(index)
    if (shared !== undefined) return await shared
    const run = this.checkStoredNow(index, scratch).finally(() => { this.checking.delete(index) })
    this.checking.set(index, run)
    return await run
  }

  /** `scratch`: a buffer of a block's size the caller lends for the read (the scrub, one block at a time). */
  private async checkStoredNow (index: number, scratch?: Buffer): Promise<ScrubResult> {
    const length = blockLength(this.manifest, index)
    for (let attempt = 0; attempt < MAX_READ_ATTEMPTS_UNDER_EVICTION; attempt++) {
      this.assertOpen()
      // Not stored, or waiting for its commit: it was verified when it came in.
      if (!this.durable.get(index) || this.pending.has(index)) { this.unchecked.clear(index); return 'skipped' }
      const epoch = this.evictEpoch
      const data = scratch !== undefined && scratch.byteLength >= length ? scratch.subarray(0, length) : Buffer.allocUnsafe(length)
      await this.readFully(data, index * this.manifest.blockSizeBytes)
      if (epoch !== this.evictEpoch) continue
      const zero = isZeroBlock(this.manifest, index)
      if (zero ? isAllZero(data) : verifyBlock(this.manifest, index, data)) {
        if (this.unchecked.get(index)) { this.unchecked.clear(index); this.counters.checkedBlocks++ }
        return 'ok'
      }
      await this.dropCorrupt(index, 'check')
      return 'corrupt'
    }
    return 'skipped'
  }

  /**
   * A stored block failed verification. It stops being present, and that is recorded, before anything else:
   * after a crash it is fetched again, never served. A zero block (present by definition) is zeroed again.
   */
  private async dropCorrupt (index: number, where: string): Promise<void> {
    if (!this.durable.get(index)) return // dropped by another reader meanwhile
    this.counters.corruptBlocks++
    this.counters.corruptCachedBlocks++
    if (isZeroBlock(this.manifest, index)) {
      this.logger.error('stored zero block failed verification; zeroing it', { image: this.manifest.imageId, block: index, where })
      const offset = index * this.manifest.blockSizeBytes
      const length = blockLength(this.manifest, index)
      // A hole again (it needs no space, even on a full disk); zeros where the file system cannot punch.
      try {
        await fallocatePunchHole(this.path, offset, length, this.closeController.signal)
      } catch {
        await this.writeFully(new Uint8Array(length), offset)
      }
      await this.handle.datasync()
      this.unchecked.clear(index)
      return
    }
    this.verified.clear(index)
    this.durable.clear(index)
    this.unchecked.clear(index)
    this.logger.error('stored block failed verification; dropped and fetched again', { image: this.manifest.imageId, block: index, where })
    try {
      await this.presence.save(this.durable, [index])
    } catch (err) {
      // It stays absent in memory; after a restart it is unchecked again and caught again on first read.
      this.logger.error('could not record a dropped block', { image: this.manifest.imageId, block: index, error: (err as Error).message })
    }
  }

  /** Fetches a dropped block again in the background, bounded by the fetch timeout and the cache's life. */
  private refetch (index: number): void {
    if (this.closed) return
    const signal = AbortSignal.any([this.closeController.signal, AbortSignal.timeout(this.fetchTimeoutMs)])
    this.ensure([index], { signal, priority: 'prefetch' }).catch(err => {
      if (!this.closed) this.logger.warn('could not fetch a dropped block again', { image: this.manifest.imageId, block: index, error: (err as Error).message })
    })
  }

  private toSpill (index: number): void {
    const data = this.pending.get(index)
    if (data === undefined || this.spill.has(index) || data.byteLength > this.maxSpillBytes) return
    this.spill.set(index, data)
    this.spillBytes += data.byteLength
    for (const [old, bytes] of this.spill) {
      if (this.spillBytes <= this.maxSpillBytes) break
      this.spill.delete(old)
      this.spillBytes -= bytes.byteLength
    }
  }

  /** Spilled blocks go back to the writer later: kept once the disk takes them, spilled again if not. */
  private scheduleSpillRetry (): void {
    if (this.spillTimer !== undefined || this.closed || this.spill.size === 0) return
    this.spillTimer = setTimeout(() => {
      this.spillTimer = undefined
      if (this.closed) return
      const requeued = [...this.spill.keys()].filter(index => this.requeueSpilled(index))
      this.startWriter()
      this.announce(requeued)
    }, this.spillRetryMs)
    this.spillTimer.unref()
  }

  /** Moves a spilled block back to the write queue (verified again); false if it was fetched meanwhile. */
  private requeueSpilled (index: number): boolean {
    const data = this.spill.get(index)
    if (data === undefined) return false
    this.fromSpill(index)
    if (this.verified.get(index)) return false
    this.verified.set(index)
    this.pending.set(index, data)
    this.addPending(data.byteLength)
    this.writeQueue.push(index)
    return true
  }

  private fromSpill (index: number): void {
    const data = this.spill.get(index)
    if (data === undefined) return
    this.spill.delete(index)
    this.spillBytes -= data.byteLength
  }

  private assertOpen (): void {
    if (this.closed) throw new CacheClosedError(`cache of ${this.manifest.imageId} is closed`)
  }

  private async readFully (into: Uint8Array, position: number): Promise<void> {
    let done = 0
    while (done < into.byteLength) {
      const { bytesRead } = await this.handle.read(into, done, into.byteLength - done, position + done)
      if (bytesRead === 0) throw new ReadRangeError(`cache file ${this.path} is shorter than the image`)
      done += bytesRead
    }
  }

  private readFullySync (into: Uint8Array, position: number): void {
    let done = 0
    while (done < into.byteLength) {
      const bytesRead = readSync(this.handle.fd, into, done, into.byteLength - done, position + done)
      if (bytesRead === 0) throw new ReadRangeError(`cache file ${this.path} is shorter than the image`)
      done += bytesRead
    }
  }

  /**
   * Writes consecutive blocks from `position`: on the event loop in one writev (a short write finishes block by
   * block), or through the thread pool while sync writes are backed off.
   */
  private async writeRun (parts: Uint8Array[], position: number): Promise<void> {
    const startMs = performance.now()
    if (startMs < this.asyncWritesUntilMs) {
      let at = position
      for (const part of parts) {
        await this.writeFully(part, at)
        at += part.byteLength
      }
      return
    }
    const bytesWritten = writevSync(this.handle.fd, parts, position)
    let at = 0
    for (const part of parts) {
      const end = at + part.byteLength
      if (end > bytesWritten) {
        const skip = Math.max(0, bytesWritten - at)
        this.writeFullySync(part.subarray(skip), position + at + skip)
      }
      at = end
    }
    const tookMs = performance.now() - startMs
    if (tookMs > this.slowSyncWriteMs) {
      const nowMs = performance.now()
      this.counters.slowSyncWrites++
      this.syncWriteBackoffMs = nextSyncWriteBackoffMs(this.syncWriteBackoffMs, this.lastSlowSyncWriteAtMs, nowMs)
      this.lastSlowSyncWriteAtMs = nowMs
      this.asyncWritesUntilMs = nowMs + this.syncWriteBackoffMs
      this.logger.info('slow cache write on the event loop; writing through the thread pool for a while', {
        image: this.manifest.imageId, bytes: at, ms: Math.round(tookMs), backoffMs: this.syncWriteBackoffMs
      })
    }
  }

  private writeFullySync (data: Uint8Array, position: number): void {
    let done = 0
    while (done < data.byteLength) {
      done += writeSync(this.handle.fd, data, done, data.byteLength - done, position + done)
    }
  }

  /** Off the event loop (the thread pool): zeros over a range that could not be punched, possibly megabytes. */
  private async writeFully (data: Uint8Array, position: number): Promise<void> {
    let done = 0
    while (done < data.byteLength) {
      const { bytesWritten } = await this.handle.write(data, done, data.byteLength - done, position + done)
      done += bytesWritten
    }
  }
}

let zeros = new Uint8Array(0)
/** memcmp against a shared zero buffer: a byte loop here cost the origin a third of its CPU while it scrubbed. */
function isAllZero (data: Uint8Array): boolean {
  if (zeros.byteLength < data.byteLength) zeros = new Uint8Array(data.byteLength)
  return Buffer.compare(data, zeros.subarray(0, data.byteLength)) === 0
}

function makeWaiter (): Waiter {
  let resolve!: () => void
  let reject!: (err: Error) => void
  const promise = new Promise<void>((res, rej) => { resolve = res; reject = rej })
  promise.catch(() => {}) // a waiter nobody awaits any more must not become an unhandled rejection
  return { promise, resolve, reject }
}

/** Resolves or rejects with `promise`, or rejects as soon as `signal` aborts. */
export async function raceAbort<T> (promise: Promise<T>, signal: AbortSignal): Promise<T> {
  signal.throwIfAborted()
  let onAbort!: () => void
  const aborted = new Promise<never>((_resolve, reject) => {
    onAbort = () => { reject(signal.reason) }
    signal.addEventListener('abort', onAbort, { once: true })
  })
  try {
    return await Promise.race([promise, aborted])
  } finally {
    signal.removeEventListener('abort', onAbort)
  }
}
