// The simulator's event queue: a binary min-heap on (timeMs, seq). seq breaks ties in insertion order, so
// equal-time events run in a reproducible order.

export interface SimEvent {
  t: number
  seq: number
  fn: () => void
}

export class EventHeap {
  private items: SimEvent[] = []
  private nextSeq = 0

  get size (): number { return this.items.length }

  push (t: number, fn: () => void): void {
    const e: SimEvent = { t, seq: this.nextSeq++, fn }
    const a = this.items
    let i = a.length
    a.push(e)
    while (i > 0) {
      const p = (i - 1) >> 1
      if (!less(e, a[p])) break
      a[i] = a[p]; i = p
    }
    a[i] = e
  }

  pop (): SimEvent | undefined {
    const a = this.items
    if (a.length === 0) return undefined
    const top = a[0]
    const last = a.pop() as SimEvent
    if (a.length > 0) {
      let i = 0
      const n = a.length
      for (;;) {
        const l = 2 * i + 1
        if (l >= n) break
        const r = l + 1
        const c = r < n && less(a[r], a[l]) ? r : l
        if (!less(a[c], last)) break
        a[i] = a[c]; i = c
      }
      a[i] = last
    }
    return top
  }

  peekTime (): number | undefined { return this.items[0]?.t }
}

function less (x: SimEvent, y: SimEvent): boolean { return x.t < y.t || (x.t === y.t && x.seq < y.seq) }
