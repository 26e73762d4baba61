// Token buckets for the per-agent upload and download limits, and a meter of recent throughput (the
// advertised upload load).

import type { Clock } from './clock.js'
import { systemClock } from './clock.js'

/**
 * A token bucket in bytes. `take` waits until the bucket is not in debt, then takes the bytes (which may put it
 * in debt: a frame larger than the burst still passes, and the wait is charged to the next taker). Waiters are
 * served in order. Unlimited when rate is undefined or 0.
 */
export class TokenBucket {
  private tokens: number
  private lastMs: number
  private tail: Promise<void> = Promise.resolve()

  constructor (readonly rateBytesPerSec: number | undefined, private readonly burstBytes = Math.max(256 * 1024, (rateBytesPerSec ?? 0) / 10),
    private readonly clock: Clock = systemClock) {
    this.tokens = burstBytes
    this.lastMs = clock.nowMs()
  }

  get limited (): boolean {
    return this.rateBytesPerSec !== undefined && this.rateBytesPerSec > 0
  }

  private refill (): void {
    const now = this.clock.nowMs()
    const rate = this.rateBytesPerSec as number
    this.tokens = Math.min(this.burstBytes, this.tokens + (now - this.lastMs) * rate / 1000)
    this.lastMs = now
  }

  async take (bytes: number, signal?: AbortSignal): Promise<void> {
    if (!this.limited) return
    const turn = this.tail.then(async () => {
      signal?.throwIfAborted()
      this.refill()
      while (this.tokens < 0) {
        await this.clock.sleep(Math.ceil(-this.tokens * 1000 / (this.rateBytesPerSec as number)), signal)
        this.refill()
      }
      this.tokens -= bytes
    })
    this.tail = turn.catch(() => {})
    await turn
  }
}

/** Bytes per second over a sliding window of `windowMs`, in `buckets` slots. */
export class RateMeter {
  private readonly slots: number[]
  private readonly slotMs: number
  private slotStartMs: number
  private current = 0

  constructor (private readonly windowMs = 2000, buckets = 10, private readonly clock: Clock = systemClock) {
    this.slots = new Array(buckets).fill(0)
    this.slotMs = windowMs / buckets
    this.slotStartMs = clock.nowMs()
  }

  private advance (): void {
    const now = this.clock.nowMs()
    let steps = Math.floor((now - this.slotStartMs) / this.slotMs)
    if (steps <= 0) return
    steps = Math.min(steps, this.slots.length)
    for (let i = 0; i < steps; i++) {
      this.current = (this.current + 1) % this.slots.length
      this.slots[this.current] = 0
    }
    this.slotStartMs = now - ((now - this.slotStartMs) % this.slotMs)
  }

  add (bytes: number): void {
    this.advance()
    this.slots[this.current] += bytes
  }

  bytesPerSec (): number {
    this.advance()
    let sum = 0
    for (const v of this.slots) sum += v
    return sum * 1000 / this.windowMs
  }
}
