// An insertion-ordered map from block ids (integers >= 0) to values, for an agent's pending and in-flight blocks:
// the subset of Map<number, V> the engine and the systems use, iterating in the same order (a key deleted and set
// again goes last). Why not a Map: these hold a handful of entries that come and go on every block, and V8's Map
// shrinks (allocates a new table) when deletes leave it a quarter full, then grows again: at 10,000 agents the
// deletes were ~10 % of the run and fed the GC. Here the entries sit in one array ([key0, value0, key1, value1,
// ...]; a deleted entry leaves a hole, key -1) that is reused, never shrunk; lookups scan it (a few entries, one
// or two cache lines). Holes are squeezed out when they outnumber the entries.

const HOLE = -1

export class BlockMap<V> {
  /** Keys and values side by side, in insertion order, up to `end`; a hole's key is HOLE and its value undefined. */
  private readonly kv: unknown[] = []
  private end = 0
  size = 0

  private find (b: number): number {
    const kv = this.kv; const end = this.end
    for (let i = 0; i < end; i += 2) if (kv[i] === b) return i
    return -1
  }

  get (b: number): V | undefined {
    const i = this.find(b)
    return i < 0 ? undefined : this.kv[i + 1] as V
  }

  has (b: number): boolean { return this.find(b) >= 0 }

  set (b: number, v: V): this {
    const i = this.find(b)
    if (i >= 0) { this.kv[i + 1] = v; return this } // a present key keeps its place, as in a Map
    const kv = this.kv; const end = this.end
    if (end < kv.length) { kv[end] = b; kv[end + 1] = v } else kv.push(b, v)
    this.end = end + 2
    this.size++
    return this
  }

  delete (b: number): boolean {
    const i = this.find(b)
    if (i < 0) return false
    this.remove(i)
    return true
  }

  /** get and delete in one look-up. */
  take (b: number): V | undefined {
    const i = this.find(b)
    if (i < 0) return undefined
    const v = this.kv[i + 1] as V
    this.remove(i)
    return v
  }

  private remove (i: number): void {
    const kv = this.kv
    kv[i] = HOLE; kv[i + 1] = undefined
    this.size--
    if (this.size === 0) this.end = 0
    else if (i + 2 === this.end) { let end = i; while (kv[end - 2] === HOLE) end -= 2; this.end = end } else if (this.end > 4 * this.size + 8) this.squeeze()
  }

  clear (): void {
    const kv = this.kv
    for (let i = 0; i < this.end; i++) kv[i] = undefined
    this.end = 0
    this.size = 0
  }

  /** The keys in order (a copy: the map may change while the caller goes through them). */
  keys (): number[] {
    const out: number[] = []
    const kv = this.kv
    for (let i = 0; i < this.end; i += 2) if (kv[i] !== HOLE) out.push(kv[i] as number)
    return out
  }

  /** As Map.forEach (entries added are visited); `fn` must not delete entries. */
  forEach (fn: (v: V, b: number) => void): void {
    const kv = this.kv
    for (let i = 0; i < this.end; i += 2) {
      const b = kv[i] as number
      if (b !== HOLE) fn(kv[i + 1] as V, b)
    }
  }

  /** Moves the entries over the holes, in order. */
  private squeeze (): void {
    const kv = this.kv
    let j = 0
    for (let i = 0; i < this.end; i += 2) {
      if (kv[i] === HOLE) continue
      kv[j] = kv[i]; kv[j + 1] = kv[i + 1]
      j += 2
    }
    for (let i = j; i < this.end; i++) kv[i] = undefined
    this.end = j
  }
}
