// A small seeded PRNG (xoshiro128**, seeded through splitmix32) so that one seed reproduces a run exactly.

function splitmix32 (state: { s: number }): number {
  state.s = (state.s + 0x9e3779b9) | 0
  let z = state.s
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b)
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35)
  return (z ^ (z >>> 16)) >>> 0
}

export class Rng {
  private a: number
  private b: number
  private c: number
  private d: number

  constructor (seed: number) {
    const st = { s: seed | 0 }
    this.a = splitmix32(st); this.b = splitmix32(st); this.c = splitmix32(st); this.d = splitmix32(st)
    if ((this.a | this.b | this.c | this.d) === 0) this.a = 1
  }

  /** Uniform 32-bit unsigned integer. */
  nextU32 (): number {
    const result = Math.imul(rotl(Math.imul(this.b, 5), 7), 9) >>> 0
    const t = this.b << 9
    this.c ^= this.a; this.d ^= this.b; this.b ^= this.c; this.a ^= this.d
    this.c ^= t
    this.d = rotl(this.d, 11)
    return result
  }

  /** Uniform in [0, 1). */
  next (): number { return this.nextU32() / 4294967296 }

  /** Uniform integer in [0, n). */
  int (n: number): number { return Math.floor(this.next() * n) }

  /** Uniform in [lo, hi). */
  range (lo: number, hi: number): number { return lo + (hi - lo) * this.next() }

  pick<T> (xs: readonly T[]): T { return xs[this.int(xs.length)] }

  /** In-place Fisher–Yates shuffle. */
  shuffle<T> (xs: T[]): T[] {
    for (let i = xs.length - 1; i > 0; i--) { const j = this.int(i + 1); const t = xs[i]; xs[i] = xs[j]; xs[j] = t }
    return xs
  }

  /** An independent generator derived from this one (for per-agent streams). */
  fork (): Rng { return new Rng(this.nextU32()) }
}

function rotl (x: number, k: number): number { return (x << k) | (x >>> (32 - k)) }
