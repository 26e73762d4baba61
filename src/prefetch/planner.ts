// The prefetch planner: pure functions that say which blocks to fetch next. No I/O, no clock: the daemon's
// prefetcher and the simulator's prefetch model both drive it.
//
// Read-ahead (an instance is booting): each instance has a position in the profile order, the position of
// its latest read (like a read-ahead stream). The plan is the next `windowBlocks` missing blocks after it.
// The window doubles while the instance keeps finding its blocks local (prefetch is paying off) and halves
// on a miss (the profile or the pace is off), between initial and max, as Linux readahead does.
// Idle: the rest of the profile in order, then the whole image in ascending order, via a resumable cursor.
// Every call does bounded work (maxScan positions) and returns at most maxBlocks blocks.

import type { BootProfile } from './profile.js'

export interface ProfileIndex {
  readonly profile: BootProfile
  readonly length: number
  /** Block at a profile position. */
  blockAt: (position: number) => number
  confidenceAt: (position: number) => number
  /** Profile position of a block, -1 if the profile does not list it. */
  positionOf: (block: number) => number
}

/** Dense lookup up to this many blocks (4 bytes each), a Map beyond. */
const DENSE_INDEX_MAX_BLOCKS = 1 << 22

export function indexProfile (profile: BootProfile): ProfileIndex {
  const n = profile.entries.length
  const order = new Uint32Array(n)
  const conf = new Float32Array(n)
  profile.entries.forEach((e, i) => { order[i] = e.block; conf[i] = e.confidence })
  let positionOf: (block: number) => number
  if (profile.blockCount <= DENSE_INDEX_MAX_BLOCKS) {
    const pos = new Int32Array(profile.blockCount).fill(-1)
    for (let i = 0; i < n; i++) pos[order[i]] = i
    positionOf = b => (b >= 0 && b < pos.length ? pos[b] : -1)
  } else {
    const pos = new Map<number, number>()
    for (let i = 0; i < n; i++) pos.set(order[i], i)
    positionOf = b => pos.get(b) ?? -1
  }
  return { profile, length: n, blockAt: i => order[i], confidenceAt: i => conf[i], positionOf }
}

export interface ReadAheadParams {
  initialWindowBlocks: number
  maxWindowBlocks: number
  /** Profile entries read by fewer boots than this are left to idle prefetch. */
  minConfidence: number
  /** Profile positions examined per instance per call. */
  maxScan: number
}

export const DEFAULT_READ_AHEAD_BYTES = { initialWindowBytes: 1024 * 1024, maxWindowBytes: 8 * 1024 * 1024 }

export function readAheadParams (blockSizeBytes: number, opts: Partial<ReadAheadParams & typeof DEFAULT_READ_AHEAD_BYTES> = {}): ReadAheadParams {
  const initialWindowBlocks = opts.initialWindowBlocks ??
    Math.max(1, Math.floor((opts.initialWindowBytes ?? DEFAULT_READ_AHEAD_BYTES.initialWindowBytes) / blockSizeBytes))
  const maxWindowBlocks = Math.max(initialWindowBlocks, opts.maxWindowBlocks ??
    Math.max(1, Math.floor((opts.maxWindowBytes ?? DEFAULT_READ_AHEAD_BYTES.maxWindowBytes) / blockSizeBytes)))
  return {
    initialWindowBlocks,
    maxWindowBlocks,
    minConfidence: opts.minConfidence ?? 0.2,
    maxScan: opts.maxScan ?? Math.max(4096, 8 * maxWindowBlocks)
  }
}

export interface ReadAheadState {
  readonly instanceId: string
  /** Profile position of the latest read that the profile lists; -1 before any (fetch from the start). */
  readonly position: number
  readonly windowBlocks: number
  readonly reads: number
  readonly hits: number
}

export function newReadAhead (instanceId: string, params: ReadAheadParams): ReadAheadState {
  return { instanceId, position: -1, windowBlocks: params.initialWindowBlocks, reads: 0, hits: 0 }
}

export interface ObservedRead {
  firstBlock: number
  /** Inclusive. */
  lastBlock: number
  /** Every block of the read was local when it arrived. */
  hit: boolean
}

/** A read tells where the instance is in the profile; a hit grows the window, a miss shrinks it. */
export function observeRead (index: ProfileIndex, state: ReadAheadState, read: ObservedRead, params: ReadAheadParams): ReadAheadState {
  let pos = -1
  const last = Math.min(read.lastBlock, read.firstBlock + params.maxScan - 1)
  for (let b = read.firstBlock; b <= last; b++) pos = Math.max(pos, index.positionOf(b))
  const reads = state.reads + 1
  const hits = state.hits + (read.hit ? 1 : 0)
  if (pos < 0) return { ...state, reads, hits } // off-profile read: says nothing about where the boot is
  const windowBlocks = read.hit
    ? Math.min(params.maxWindowBlocks, state.windowBlocks * 2)
    : Math.max(params.initialWindowBlocks, Math.floor(state.windowBlocks / 2))
  return { instanceId: state.instanceId, position: pos, windowBlocks, reads, hits }
}

export interface BlockFilter {
  /** Present (or a zero block): never fetch. */
  has: (block: number) => boolean
  /** Being fetched already: do not plan again. */
  inFlight?: (block: number) => boolean
  /** A zero block (a hole): needs no fetch and takes no place in a sequential window. */
  isZero?: (block: number) => boolean
}

/**
 * The next missing blocks ahead of each instance, nearest first: the k-th missing block ahead of every
 * instance comes before the (k+1)-th of any (round robin), duplicates dropped. At most maxBlocks.
 */
export function planReadAhead (index: ProfileIndex, states: readonly ReadAheadState[], filter: BlockFilter, params: ReadAheadParams, maxBlocks: number): number[] {
  const lists: number[][] = []
  const sorted = [...states].sort((x, y) => (x.instanceId < y.instanceId ? -1 : x.instanceId > y.instanceId ? 1 : 0))
  for (const s of sorted) {
    const want = Math.min(s.windowBlocks, maxBlocks)
    const list: number[] = []
    const end = Math.min(index.length, s.position + 1 + params.maxScan)
    for (let p = s.position + 1; p < end && list.length < want; p++) {
      if (index.confidenceAt(p) < params.minConfidence) continue
      const b = index.blockAt(p)
      if (filter.has(b) || filter.inFlight?.(b) === true) continue
      list.push(b)
    }
    lists.push(list)
  }
  return roundRobin(lists, maxBlocks)
}

/** The k-th entry of every list before the (k+1)-th of any, duplicates dropped, at most maxBlocks. */
function roundRobin (lists: readonly number[][], maxBlocks: number): number[] {
  const out: number[] = []
  const taken = new Set<number>()
  const longest = lists.reduce((m, l) => Math.max(m, l.length), 0)
  for (let k = 0; k < longest && out.length < maxBlocks; k++) {
    for (const l of lists) {
      if (k < l.length && !taken.has(l[k])) {
        taken.add(l[k])
        out.push(l[k])
        if (out.length >= maxBlocks) break
      }
    }
  }
  return out
}

/** Where idle prefetch resumes. `quietScan` counts positions scanned since a missing block was last seen. */
export interface IdleCursor {
  readonly phase: 'profile' | 'image' | 'done'
  readonly position: number
  readonly quietScan: number
}

export const IDLE_START: IdleCursor = { phase: 'profile', position: 0, quietScan: 0 }

export interface IdlePlan { blocks: number[], cursor: IdleCursor }

/**
 * Idle prefetch: profile order first (every confidence), then blocks 0..blockCount-1, skipping present and
 * in-flight blocks. The image phase wraps around (a failed fetch leaves a block missing behind the cursor)
 * and ends ('done') after a full pass that found nothing missing or in flight.
 */
export function planIdle (index: ProfileIndex | undefined, blockCount: number, cursor: IdleCursor, filter: BlockFilter,
  maxBlocks: number, maxScan = 65536): IdlePlan {
  const blocks: number[] = []
  // Blocks planned by this call are neither present nor in flight yet: a wrap or the image phase must not plan them twice.
  const planned = new Set<number>()
  const busy = (b: number): boolean => planned.has(b) || filter.inFlight?.(b) === true
  const add = (b: number): void => { planned.add(b); blocks.push(b) }
  let { phase, position, quietScan } = cursor
  let scanned = 0
  const consider = (b: number): void => {
    if (filter.has(b)) { quietScan++; return }
    quietScan = 0
    if (!busy(b)) add(b)
  }
  while (phase !== 'done' && blocks.length < maxBlocks && scanned < maxScan) {
    if (phase === 'profile') {
      if (index === undefined || position >= index.length) {
        phase = 'image'; position = 0; quietScan = 0
        continue
      }
      const b = index.blockAt(position++)
      scanned++
      if (!filter.has(b) && !busy(b)) add(b)
    } else {
      if (position >= blockCount) position = 0
      consider(position++)
      scanned++
      if (quietScan >= blockCount) phase = 'done'
    }
  }
  return { blocks, cursor: { phase, position, quietScan } }
}

// Sequential read-ahead: the first boot of an image has no profile anywhere, and its reads are still mostly
// files read front to back (in the Debian boot trace, 415 of 801 first touches are the block after the previous
// one). So after each read, the data blocks that follow it are fetched, those not present or in flight. The
// window counts data blocks after the read (zero blocks, holes, are skipped: the window spends the link only on
// data), whatever their state, so planning again for the same read plans nothing new. A small window: a guess
// that is wrong costs link time that a later demand read may need.

export interface SequentialParams {
  /** Data blocks after an instance's latest read that should be local or on their way. */
  windowBlocks: number
  /** Blocks examined after the read (bounded work; holes and present blocks are skipped). */
  scanBlocks: number
}

export const DEFAULT_SEQUENTIAL_BYTES = { windowBytes: 256 * 1024, scanBytes: 2 * 1024 * 1024 }

export function sequentialParams (blockSizeBytes: number, opts: Partial<SequentialParams & typeof DEFAULT_SEQUENTIAL_BYTES> = {}): SequentialParams {
  const windowBlocks = opts.windowBlocks ?? Math.max(1, Math.floor((opts.windowBytes ?? DEFAULT_SEQUENTIAL_BYTES.windowBytes) / blockSizeBytes))
  const scanBlocks = Math.max(windowBlocks, opts.scanBlocks ?? Math.max(1, Math.floor((opts.scanBytes ?? DEFAULT_SEQUENTIAL_BYTES.scanBytes) / blockSizeBytes)))
  return { windowBlocks, scanBlocks }
}

/**
 * The next missing blocks after each given block (an instance's latest read), nearest first, round robin over
 * the instances, duplicates dropped, at most maxBlocks. Blocks out of range are ignored.
 */
export function planSequential (lastBlocks: readonly number[], blockCount: number, filter: BlockFilter, params: SequentialParams, maxBlocks: number): number[] {
  const lists: number[][] = []
  for (const last of [...lastBlocks].sort((a, b) => a - b)) {
    if (!Number.isInteger(last) || last < 0 || last >= blockCount) continue
    const list: number[] = []
    const end = Math.min(blockCount, last + 1 + params.scanBlocks)
    let counted = 0
    for (let b = last + 1; b < end && counted < params.windowBlocks; b++) {
      if (filter.isZero?.(b) === true) continue
      counted++
      if (!filter.has(b) && filter.inFlight?.(b) !== true) list.push(b)
    }
    lists.push(list)
  }
  return roundRobin(lists, maxBlocks)
}
