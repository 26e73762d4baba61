// The simulator's event queue: a binary min-heap on (timeMs, seq). seq breaks ties in insertion order, so
// equal-time events run in a reproducible order. Times and sequence numbers live in typed arrays beside the
// callbacks (struct of arrays): the sift loops compare numbers in two flat buffers instead of chasing one
// object per event, which was the simulator's hottest line at 10,000 agents (cache misses).

export interface SimEvent {
  t: number
  fn: () => void
}

export class EventHeap {
  private t = new Float64Array(1024)
  private seq = new Float64Array(1024)
  private fns: Array<() => void> = []
  private n = 0
  private nextSeq = 0
  /** The event pop() returns, reused (the caller reads it before the next pop). */
  private readonly top: SimEvent = { t: 0, fn: noop }

  get size (): number { return this.n }

  push (time: number, fn: () => void): void {
    if (this.n === this.t.length) this.grow()
    const t = this.t; const seq = this.seq; const fns = this.fns
    const s = this.nextSeq++
    let i = this.n++
    while (i > 0) {
      const p = (i - 1) >> 1
      if (t[p] < time || (t[p] === time && seq[p] < s)) break
      t[i] = t[p]; seq[i] = seq[p]; fns[i] = fns[p]
      i = p
    }
    t[i] = time; seq[i] = s; fns[i] = fn
  }

  /** The earliest event, or undefined when none is left; the object is reused by the next pop. */
  pop (): SimEvent | undefined {
    if (this.n === 0) return undefined
    const t = this.t; const seq = this.seq; const fns = this.fns
    this.top.t = t[0]
    this.top.fn = fns[0]
    const n = --this.n
    const lt = t[n]; const ls = seq[n]; const lf = fns[n]
    fns[n] = noop // let the callback be collected
    if (n > 0) {
      let i = 0
      for (;;) {
        const l = 2 * i + 1
        if (l >= n) break
        const r = l + 1
        const c = r < n && (t[r] < t[l] || (t[r] === t[l] && seq[r] < seq[l])) ? r : l
        if (lt < t[c] || (lt === t[c] && ls < seq[c])) break
        t[i] = t[c]; seq[i] = seq[c]; fns[i] = fns[c]
        i = c
      }
      t[i] = lt; seq[i] = ls; fns[i] = lf
    }
    return this.top
  }

  peekTime (): number | undefined { return this.n === 0 ? undefined : this.t[0] }

  private grow (): void {
    const t = new Float64Array(this.t.length * 2); t.set(this.t); this.t = t
    const seq = new Float64Array(this.seq.length * 2); seq.set(this.seq); this.seq = seq
  }
}

function noop (): void {}
