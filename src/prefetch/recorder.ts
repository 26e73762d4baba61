// Records the first touch of each block of an image by one instance's reads: the raw material of a profile.
// Bounded: one bit per block (touched or not) and at most one entry per block; reads after the recording
// window (a boot, not a lifetime) are ignored.

import { finalizeProfile, MAX_PROFILE_ENTRIES, MAX_PROFILE_TIME_MS, type BootProfile } from './profile.js'

/** A boot is over by then; later reads are the workload, not the boot. */
export const DEFAULT_RECORD_WINDOW_MS = 10 * 60 * 1000

export interface RecorderInit {
  imageId: string
  rootHex: string
  blockSizeBytes: number
  blockCount: number
  /** Clock reading when the instance was created; entry times are relative to it. */
  instanceStartMs: number
  recordWindowMs?: number
  maxEntries?: number
}

export interface Recorder {
  /** Notes a read; returns how many blocks it touched for the first time. Never throws on odd input. */
  noteRead: (nowMs: number, offset: number, length: number) => number
  readonly touchedBlocks: number
  /** Reads ignored: out of range, malformed, or after the recording window. */
  readonly ignoredReads: number
  /** True once the recording window has passed or the entry bound is reached. */
  readonly full: boolean
  /** A one-boot profile (confidence 1 for every entry), in first-touch order. */
  toProfile: () => BootProfile
}

export function createRecorder (init: RecorderInit): Recorder {
  const { blockSizeBytes, blockCount, instanceStartMs } = init
  const windowMs = Math.min(init.recordWindowMs ?? DEFAULT_RECORD_WINDOW_MS, MAX_PROFILE_TIME_MS)
  const maxEntries = Math.min(init.maxEntries ?? MAX_PROFILE_ENTRIES, MAX_PROFILE_ENTRIES, blockCount)
  const touched = new Uint8Array(Math.ceil(blockCount / 8))
  const blocks: number[] = []
  const times: number[] = []
  let ignored = 0
  let windowOver = false

  return {
    noteRead (nowMs, offset, length) {
      const tMs = Math.round(nowMs - instanceStartMs)
      if (!Number.isFinite(tMs) || !Number.isFinite(offset) || !Number.isFinite(length) || offset < 0 || length <= 0) {
        ignored++
        return 0
      }
      if (tMs > windowMs) windowOver = true
      if (windowOver || blocks.length >= maxEntries) {
        ignored++
        return 0
      }
      const first = Math.floor(offset / blockSizeBytes)
      const last = Math.min(blockCount - 1, Math.floor((offset + length - 1) / blockSizeBytes))
      if (first >= blockCount) {
        ignored++
        return 0
      }
      let added = 0
      for (let b = first; b <= last && blocks.length < maxEntries; b++) {
        const bit = 1 << (b & 7)
        if ((touched[b >> 3] & bit) !== 0) continue
        touched[b >> 3] |= bit
        blocks.push(b)
        times.push(Math.max(0, tMs))
        added++
      }
      return added
    },
    get touchedBlocks () { return blocks.length },
    get ignoredReads () { return ignored },
    get full () { return windowOver || blocks.length >= maxEntries },
    toProfile () {
      // Stable sort by time: the clock may step back; ties keep first-touch order.
      const order = blocks.map((_, i) => i).sort((a, b) => times[a] - times[b] || a - b)
      return finalizeProfile({
        imageId: init.imageId,
        rootHex: init.rootHex,
        blockSizeBytes,
        blockCount,
        boots: 1,
        entries: order.map(i => ({ block: blocks[i], tMs: times[i], confidence: 1 }))
      })
    }
  }
}
