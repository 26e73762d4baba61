// How much an agent may take from peers it asks only as a last resort (their child slots are full: the origin
// while we attach, or while the tree rearranges). Such reads keep a VM going when it has no parent, but each is
// a byte the origin sends outside the tree: with no bound, 8 agents whose tree kept rearranging on a loaded
// host made the origin send 2.3x the image (cluster test). A burst covers a VM's first reads; after it, a slow
// refill keeps a VM that never gets a parent alive without letting it drain the origin.

import type { Clock } from './clock.js'
import { systemClock } from './clock.js'

/** A burst of this many bytes: the first reads of a boot (bootloader, kernel start) while attaching. */
export const DEFAULT_LAST_RESORT_BURST_BYTES = 1024 * 1024
/** Refilled at this rate: one 64 KiB block a second. */
export const DEFAULT_LAST_RESORT_BYTES_PER_SEC = 64 * 1024

/** A synchronous token bucket: take what is there or wait for it (msUntil), never go into debt. */
export class LastResortBudget {
  private tokens: number
  private lastMs: number

  constructor (private readonly burstBytes = DEFAULT_LAST_RESORT_BURST_BYTES,
    private readonly bytesPerSec = DEFAULT_LAST_RESORT_BYTES_PER_SEC, private readonly clock: Clock = systemClock) {
    if (!(burstBytes > 0) || !(bytesPerSec > 0)) throw new RangeError('last-resort burst and rate must be > 0')
    this.tokens = burstBytes
    this.lastMs = clock.nowMs()
  }

  private refill (): void {
    const now = this.clock.nowMs()
    this.tokens = Math.min(this.burstBytes, this.tokens + (now - this.lastMs) * this.bytesPerSec / 1000)
    this.lastMs = now
  }

  /** Takes the bytes if the budget holds them (a block larger than the burst needs a full bucket). */
  tryTake (bytes: number): boolean {
    this.refill()
    const need = Math.min(bytes, this.burstBytes)
    if (this.tokens < need) return false
    this.tokens -= need
    return true
  }

  /** Milliseconds until tryTake(bytes) can succeed (0: now). */
  msUntil (bytes: number): number {
    this.refill()
    const need = Math.min(bytes, this.burstBytes)
    return this.tokens >= need ? 0 : Math.ceil((need - this.tokens) * 1000 / this.bytesPerSec)
  }
}
