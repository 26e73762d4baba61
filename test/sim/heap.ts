// The simulator's event queue: a 4-ary min-heap on (timeMs, seq). seq breaks ties in insertion order, so
// equal-time events run in a reproducible order. Each entry is two numbers side by side in one typed array
// ([t0, key0, t1, key1, ...]), and the four children of an entry are adjacent (64 bytes): a pop at 10,000
// agents (hundreds of thousands of pending events) reads one cache line per level. The payload (a callback or
// any object the caller dispatches itself: the engine's hot events, no closure per event) stays in a slot of
// its own array while the entry moves: the entry's key is seq * SLOTS + slot, so the sift loops move numbers
// only (moving payloads too cost a second cache miss per level) and comparing keys compares seqs (they are
// unique). The order of events is exactly (timeMs, seq), as before.

export interface SimEvent<P> {
  t: number
  fn: P
}

/** Payload slots (events pending at once): 2^24. */
const SLOTS = 2 ** 24
/** seq stays below this, so that seq * SLOTS + slot is an exact integer in a double (< 2^53). */
const SEQ_LIMIT = 2 ** 29

export class EventHeap<P = () => void> {
  /** [time, seq * SLOTS + slot] per entry. */
  private ts = new Float64Array(2048)
  /** Payloads by slot. */
  private fns: Array<P | undefined> = []
  /** Free slots (a stack: the slot freed last, still in cache, is taken first). */
  private free = new Int32Array(1024)
  private nFree = 0
  private n = 0
  private nextSeq = 0
  /** The event pop() returns, reused (the caller reads it before the next pop). */
  private readonly top: SimEvent<P | undefined> = { t: 0, fn: undefined }

  get size (): number { return this.n }

  push (time: number, fn: P): void {
    if (2 * this.n === this.ts.length) this.grow()
    if (this.nextSeq === SEQ_LIMIT) this.renumber()
    let slot: number
    if (this.nFree > 0) slot = this.free[--this.nFree]
    else {
      slot = this.fns.length
      if (slot === SLOTS) throw new RangeError(`EventHeap: more than ${SLOTS} events pending`)
    }
    this.fns[slot] = fn
    const key = this.nextSeq++ * SLOTS + slot
    const ts = this.ts
    let i = this.n++
    while (i > 0) {
      const p = (i - 1) >> 2
      const tp = ts[2 * p]
      if (tp < time || (tp === time && ts[2 * p + 1] < key)) break
      ts[2 * i] = tp; ts[2 * i + 1] = ts[2 * p + 1]
      i = p
    }
    ts[2 * i] = time; ts[2 * i + 1] = key
  }

  /** The earliest event, or undefined when none is left; the object is reused by the next pop. */
  pop (): SimEvent<P> | undefined {
    if (this.n === 0) return undefined
    const ts = this.ts
    const key = ts[1]
    const slot = key - Math.floor(key / SLOTS) * SLOTS // exact: SLOTS is a power of two (and no fmod call)
    this.top.t = ts[0]
    this.top.fn = this.fns[slot]
    this.fns[slot] = undefined // let the payload be collected
    if (this.nFree === this.free.length) { const f = new Int32Array(2 * this.nFree); f.set(this.free); this.free = f }
    this.free[this.nFree++] = slot
    const n = --this.n
    const lt = ts[2 * n]; const lk = ts[2 * n + 1]
    if (n > 0) {
      let i = 0
      for (;;) {
        const first = 4 * i + 1
        if (first >= n) break
        // the smallest of up to four children
        let c = first
        let tc = ts[2 * first]; let kc = ts[2 * first + 1]
        const last = first + 3 < n ? first + 3 : n - 1
        for (let k = first + 1; k <= last; k++) {
          const tk = ts[2 * k]
          if (tk < tc || (tk === tc && ts[2 * k + 1] < kc)) { c = k; tc = tk; kc = ts[2 * k + 1] }
        }
        if (lt < tc || (lt === tc && lk < kc)) break
        ts[2 * i] = tc; ts[2 * i + 1] = kc
        i = c
      }
      ts[2 * i] = lt; ts[2 * i + 1] = lk
    }
    return this.top as SimEvent<P>
  }

  peekTime (): number | undefined { return this.n === 0 ? undefined : this.ts[0] }

  private grow (): void {
    const ts = new Float64Array(this.ts.length * 2); ts.set(this.ts); this.ts = ts
  }

  /**
   * Gives the pending entries the seqs 0..n-1 in their order (their slots kept), so that keys stay exact: every
   * comparison between them, and with entries pushed later, comes out as before.
   */
  private renumber (): void {
    const ts = this.ts
    const order = Array.from({ length: this.n }, (_, i) => i).sort((a, b) => ts[2 * a + 1] - ts[2 * b + 1])
    order.forEach((i, seq) => { ts[2 * i + 1] = seq * SLOTS + ts[2 * i + 1] % SLOTS })
    this.nextSeq = this.n
  }
}
