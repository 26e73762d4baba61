// Boot traces (`time_ms,offset,length` CSV) turned into the simulator's workload: per read, the think time
// before it and the dense ids of the blocks it touches (only blocks the trace touches get an id).

import { readFileSync } from 'node:fs'

export class TraceFormatError extends Error {
  override name = 'TraceFormatError'
}

export interface TraceRead {
  /** Time between the end of the previous read and this read's issue (the trace's gap). */
  thinkMs: number
  /** Dense block ids this read needs, ascending. */
  blocks: number[]
}

export interface Trace {
  reads: TraceRead[]
  blockSizeBytes: number
  /** Distinct blocks touched (dense ids are 0..blockCount-1). */
  blockCount: number
  /** The image's block index of each dense id (adverts summarize presence by image block groups). */
  imageBlocks: number[]
  /** Distinct bytes read (byte-exact, not rounded to blocks): F of the lower bound. */
  distinctBytes: number
  /** Sum of think times: the boot's duration with instant reads. */
  thinkTotalMs: number
  /** Per dense id: bytes of that block the reads ask for, repeats included (what a cacheless NBD client moves). */
  readBytes: number[]
}

export function parseTrace (text: string, blockSizeBytes = 64 * 1024, maxReads = 1_000_000): Trace {
  const lines = text.split('\n')
  const raw: Array<{ t: number, off: number, len: number }> = []
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].trim()
    if (line === '' || (i === 0 && /^[a-z_]/i.test(line))) continue
    const parts = line.split(',')
    if (parts.length !== 3) throw new TraceFormatError(`line ${i + 1}: expected time_ms,offset,length`)
    const [t, off, len] = parts.map(Number)
    if (![t, off, len].every(Number.isFinite) || t < 0 || off < 0 || len <= 0) throw new TraceFormatError(`line ${i + 1}: bad numbers`)
    raw.push({ t, off, len })
    if (raw.length > maxReads) throw new TraceFormatError(`more than ${maxReads} reads`)
  }
  if (raw.length === 0) throw new TraceFormatError('no reads')
  const dense = new Map<number, number>()
  const imageBlocks: number[] = []
  const readBytes: number[] = []
  const reads: TraceRead[] = []
  let prevT = 0
  let thinkTotalMs = 0
  const intervals: Array<[number, number]> = []
  for (const r of raw) {
    const thinkMs = Math.max(0, r.t - prevT)
    prevT = Math.max(prevT, r.t)
    thinkTotalMs += thinkMs
    const blocks: number[] = []
    for (let b = Math.floor(r.off / blockSizeBytes); b <= Math.floor((r.off + r.len - 1) / blockSizeBytes); b++) {
      let id = dense.get(b)
      if (id === undefined) { id = dense.size; dense.set(b, id); imageBlocks.push(b); readBytes.push(0) }
      blocks.push(id)
      readBytes[id] += Math.min(r.off + r.len, (b + 1) * blockSizeBytes) - Math.max(r.off, b * blockSizeBytes)
    }
    blocks.sort((a, b) => a - b)
    reads.push({ thinkMs, blocks })
    intervals.push([r.off, r.off + r.len])
  }
  intervals.sort((a, b) => a[0] - b[0])
  let distinctBytes = 0
  let curS = -1; let curE = -1
  for (const [s, e] of intervals) {
    if (s > curE) { if (curE > curS) distinctBytes += curE - curS; curS = s; curE = e } else if (e > curE) curE = e
  }
  if (curE > curS) distinctBytes += curE - curS
  return { reads, blockSizeBytes, blockCount: dense.size, imageBlocks, distinctBytes, thinkTotalMs, readBytes }
}

export function loadTrace (path: string, blockSizeBytes?: number): Trace {
  return parseTrace(readFileSync(path, 'utf8'), blockSizeBytes)
}
