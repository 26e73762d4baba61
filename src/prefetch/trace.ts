// Parses a block read trace (`time_ms,offset,length` CSV with a header, as in ../shared/traces), bounded.

export interface TraceRead { tMs: number, offset: number, length: number }

export const MAX_TRACE_READS = 1_000_000

export class TraceParseError extends Error {
  override name = 'TraceParseError'
}

export function parseReadTrace (csv: string, maxReads = MAX_TRACE_READS): TraceRead[] {
  const lines = csv.split('\n')
  const out: TraceRead[] = []
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].trim()
    if (line === '' || (i === 0 && /[a-z]/i.test(line))) continue
    const parts = line.split(',')
    const [tMs, offset, length] = parts.map(Number)
    if (parts.length !== 3 || !(tMs >= 0) || !Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length <= 0) {
      throw new TraceParseError(`line ${i + 1}: expected time_ms,offset,length, got "${line.slice(0, 80)}"`)
    }
    if (out.length >= maxReads) throw new TraceParseError(`more than ${maxReads} reads`)
    out.push({ tMs, offset, length })
  }
  return out
}
