// The advert rate bound per (image topic, author): a token bucket of ADVERT_BURST adverts, refilled at a fixed
// rate; adverts beyond it are rejected before they are decoded (see adverts.ts for why). Rejections are counted
// until the author has stayed under the bound long enough to refill the whole burst, not only until the next
// token: a receiver slowed by load reads a flood at its own pace, sees a refilled token every few messages, and
// counting "in a row" never reached ADVERT_BURST there (a CI run: 112 adverts of a 400/s flood validated, the
// flooder graylisted but not banned). Pure: the caller passes the time.

/** Adverts one author may send at once; the author of ADVERT_BURST rejected ones is a flooder. */
export const ADVERT_BURST = 20
/** Authors whose budgets are remembered; beyond it, refilled budgets (same as none) and then the oldest go. */
export const MAX_ADVERT_BUDGETS = 4096

interface Budget {
  tokens: number
  atMs: number
  /** Adverts rejected since the budget was last full. */
  rejected: number
}

export class AdvertBudgets {
  private readonly budgets = new Map<string, Budget>()

  /** `refillPerMs`: adverts per ms the budget regains (Infinity: no bound). */
  constructor (private readonly refillPerMs: number, private readonly maxBudgets = MAX_ADVERT_BUDGETS) {}

  /** Takes one advert of `key`: 0 when it may pass, else how many were rejected since the budget was full. */
  take (key: string, nowMs: number): number {
    let budget = this.budgets.get(key)
    if (budget === undefined) {
      if (this.budgets.size >= this.maxBudgets) this.evict(nowMs)
      budget = { tokens: ADVERT_BURST, atMs: nowMs, rejected: 0 }
      this.budgets.set(key, budget)
    }
    budget.tokens = Math.min(ADVERT_BURST, budget.tokens + (nowMs - budget.atMs) * this.refillPerMs)
    budget.atMs = nowMs
    // Full again: whatever it sent over the bound before was a burst, forgiven.
    if (budget.tokens >= ADVERT_BURST) budget.rejected = 0
    if (budget.tokens >= 1) {
      budget.tokens -= 1
      return 0
    }
    return ++budget.rejected
  }

  get size (): number { return this.budgets.size }

  /** Drops the budgets whose key starts with `prefix` (a topic left). */
  forget (prefix: string): void {
    for (const key of this.budgets.keys()) if (key.startsWith(prefix)) this.budgets.delete(key)
  }

  private evict (nowMs: number): void {
    for (const [k, b] of this.budgets) if (b.tokens + (nowMs - b.atMs) * this.refillPerMs >= ADVERT_BURST) this.budgets.delete(k)
    if (this.budgets.size >= this.maxBudgets) this.budgets.delete(this.budgets.keys().next().value!)
  }
}
