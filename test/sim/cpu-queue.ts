// A host's CPU (or a pool shared by hosts) as a calendar of busy intervals, so that work can be booked for a
// time ahead of the clock without holding the CPU idle meanwhile: a block's receive work is booked when the
// transfer is queued, for when the block will arrive, and the deliver event then runs once, when that work
// is done (one event per block instead of two). Work booked later but ready earlier fills the idle gaps
// before the booked intervals (and runs on after them if a gap is too short): work-conserving, with earlier
// bookings keeping their slots. Booked in time order it is the FIFO server it replaces.

/**
 * Books `durMs` of work ready at `readyMs` (≥ nowMs) into the calendar `a` (busy intervals, sorted and disjoint,
 * as [start0, end0, start1, end1, ...]) at the first idle time from then; returns when it is done. Intervals
 * that ended by `nowMs` are forgotten (nothing can be booked before the clock). The network keeps one such
 * array per host (no object around it: one cache miss fewer per booking at 10,000 hosts).
 */
export function bookCalendar (a: number[], nowMs: number, readyMs: number, durMs: number): number {
  if (a.length !== 0 && a[1] <= nowMs) {
    let drop = 2
    while (drop < a.length && a[drop + 1] <= nowMs) drop += 2
    if (drop === a.length) a.length = 0; else a.splice(0, drop)
  }
  if (durMs <= 0) return readyMs
  // the first interval that ends after readyMs
  let i = 0
  while (i < a.length && a[i + 1] <= readyMs) i += 2
  let t = readyMs
  let left = durMs
  let j = i
  // fill the gaps between the intervals from i on; j ends past the last interval the work touches
  while (j < a.length) {
    const gap = a[j] - t
    if (gap >= left) break
    if (gap > 0) left -= gap
    t = a[j + 1] > t ? a[j + 1] : t
    j += 2
  }
  const done = t + left
  // the work makes [min(readyMs, a[i]), done] busy, merging the intervals i..j-1 it ran between; an interval
  // that starts exactly at `done` joins too
  let start = i < a.length && a[i] < readyMs ? a[i] : readyMs
  if (i > 0 && a[i - 1] >= start) { i -= 2; start = a[i] } // the interval before ends where this work starts
  let end = done
  if (j < a.length && a[j] <= done) { end = a[j + 1]; j += 2 }
  // the usual cases without splice: the work extends or replaces one interval, or goes after the last
  if (j - i === 2) { a[i] = start; a[i + 1] = end } else if (j === i && i === a.length) a.push(start, end)
  else a.splice(i, j - i, start, end)
  return done
}

export class CpuQueue {
  /** Busy intervals, sorted and disjoint, as [start0, end0, start1, end1, ...] (ms). */
  private busy: number[] = []
  /** Busy time booked so far (ms), for the load reports. */
  busyMs = 0

  /**
   * Books `durMs` of work ready at `readyMs` (≥ nowMs) into the first idle time from then; returns when it
   * is done. Intervals that ended by `nowMs` are forgotten (nothing can be booked before the clock).
   */
  book (nowMs: number, readyMs: number, durMs: number): number {
    this.busyMs += durMs
    return bookCalendar(this.busy, nowMs, readyMs, durMs)
  }

  /** When the CPU is next idle from `fromMs` on (for tests and reports). */
  freeAtMs (fromMs: number): number {
    const a = this.busy
    for (let i = 0; i < a.length; i += 2) if (a[i] <= fromMs && a[i + 1] > fromMs) return a[i + 1]
    return fromMs
  }
}

/**
 * One calendar per host, all in one flat buffer: host h's calendar is the numbers from h * stride, its length
 * (numbers used) first, then the CPU work booked at the host so far (ms, for the reports), then its intervals
 * as bookCalendar keeps them. A booking at 10,000 hosts reads one or two cache lines of the buffer instead of
 * the host's array object and then its elements (and a third array for the work); the stride doubles (every
 * calendar copied) when one host needs more room. Books exactly as bookCalendar.
 */
/** Numbers before a host's intervals in CalendarSlab: their count, the host's CPU work. */
const HEAD = 2

export class CalendarSlab {
  private buf = new Float64Array(0)
  private stride = 16
  private hosts = 0

  /** Adds a host with an empty calendar; returns its index. */
  add (): number {
    const h = this.hosts++
    if (this.hosts * this.stride > this.buf.length) this.relayout(this.stride, Math.max(1024, 2 * this.hosts))
    return h
  }

  /** Copies every calendar into a buffer of `capacity` hosts of `stride` numbers each. */
  private relayout (stride: number, capacity: number): void {
    const buf = new Float64Array(capacity * stride)
    const old = this.buf; const s0 = this.stride
    const n = Math.min(this.hosts, old.length / s0)
    for (let h = 0; h < n; h++) buf.set(old.subarray(h * s0, h * s0 + HEAD + old[h * s0]), h * stride)
    this.buf = buf
    this.stride = stride
  }

  /** CPU work booked at host h so far (ms; as given to addWork). */
  work (h: number): number { return this.buf[h * this.stride + 1] }

  addWork (h: number, ms: number): void { this.buf[h * this.stride + 1] += ms }

  /** bookCalendar on host h's calendar. */
  book (h: number, nowMs: number, readyMs: number, durMs: number): number {
    let buf = this.buf
    let a = h * this.stride + HEAD // the intervals start here; their count of numbers is at a - HEAD
    let len = buf[a - HEAD]
    if (len !== 0 && buf[a + 1] <= nowMs) {
      let drop = 2
      while (drop < len && buf[a + drop + 1] <= nowMs) drop += 2
      if (drop === len) len = 0; else { buf.copyWithin(a, a + drop, a + len); len -= drop }
      buf[a - HEAD] = len
    }
    if (durMs <= 0) return readyMs
    let i = 0
    while (i < len && buf[a + i + 1] <= readyMs) i += 2
    let t = readyMs
    let left = durMs
    let j = i
    while (j < len) {
      const gap = buf[a + j] - t
      if (gap >= left) break
      if (gap > 0) left -= gap
      t = buf[a + j + 1] > t ? buf[a + j + 1] : t
      j += 2
    }
    const done = t + left
    let start = i < len && buf[a + i] < readyMs ? buf[a + i] : readyMs
    if (i > 0 && buf[a + i - 1] >= start) { i -= 2; start = buf[a + i] } // the interval before ends where this work starts
    let end = done
    if (j < len && buf[a + j] <= done) { end = buf[a + j + 1]; j += 2 }
    // [i, j) becomes the one interval [start, end]
    const newLen = len - (j - i) + 2
    if (HEAD + newLen > this.stride) {
      this.relayout(2 * this.stride, this.buf.length / this.stride)
      buf = this.buf
      a = h * this.stride + HEAD
    }
    if (j - i !== 2) buf.copyWithin(a + i + 2, a + j, a + len)
    buf[a + i] = start
    buf[a + i + 1] = end
    buf[a - HEAD] = newLen
    return done
  }
}
