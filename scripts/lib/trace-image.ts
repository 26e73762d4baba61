// A stand-in for a real VM image when only a read trace is at hand: a sparse raw file with random data in
// every 64 KiB block the trace reads, plus `extraBytes` of data elsewhere (a real image holds far more than
// one boot reads), the rest holes. Timing and caching depend on offsets, not content.

import { open } from 'node:fs/promises'
import { randomBytes } from 'node:crypto'
import type { TraceRead } from './nbd-replay.js'

const BLOCK = 64 * 1024

export async function makeTraceImage (path: string, reads: readonly TraceRead[], sizeBytes: number, extraBytes = 256 * 1024 * 1024): Promise<void> {
  const blocks = new Set<number>()
  for (const r of reads) {
    if (r.offset + r.length > sizeBytes) throw new RangeError(`trace read at ${r.offset} is past the image size ${sizeBytes}`)
    for (let b = Math.floor(r.offset / BLOCK); b <= Math.floor((r.offset + r.length - 1) / BLOCK); b++) blocks.add(b)
  }
  // Extra data in 1 MiB runs spread evenly over the image.
  const blockCount = Math.ceil(sizeBytes / BLOCK)
  const runs = Math.floor(extraBytes / (1024 * 1024))
  for (let i = 0; i < runs; i++) {
    const first = Math.floor((i + 0.5) * blockCount / runs)
    for (let b = first; b < Math.min(blockCount, first + 16); b++) blocks.add(b)
  }
  const fh = await open(path, 'w')
  try {
    await fh.truncate(sizeBytes)
    const sorted = [...blocks].sort((a, b) => a - b)
    for (let i = 0; i < sorted.length;) {
      let j = i
      while (j + 1 < sorted.length && sorted[j + 1] === sorted[j] + 1 && j - i < 63) j++
      const offset = sorted[i] * BLOCK
      const length = Math.min((j - i + 1) * BLOCK, sizeBytes - offset)
      await fh.write(randomBytes(length), 0, length, offset)
      i = j + 1
    }
  } finally {
    await fh.close()
  }
}
