// Progress for people: bars, rates and ETAs measured over a short sliding window of samples.

/** "[#######.........]" for a fraction in [0, 1]. */
export function bar (fraction: number, width = 24): string {
  const f = Math.min(1, Math.max(0, Number.isFinite(fraction) ? fraction : 0))
  const full = Math.round(f * width)
  return `[${'#'.repeat(full)}${'.'.repeat(width - full)}]`
}

export function formatDuration (ms: number): string {
  const s = Math.max(0, Math.round(ms / 1000))
  return s < 120 ? `${s}s` : s < 7200 ? `${Math.round(s / 60)}m` : `${(s / 3600).toFixed(1)}h`
}

/** Rate of a growing quantity from timestamped samples; keeps at most `maxSamples` within `windowMs`. */
export class RateMeter {
  private readonly samples: Array<{ atMs: number, value: number }> = []
  constructor (private readonly windowMs = 10_000, private readonly maxSamples = 64) {}

  add (atMs: number, value: number): void {
    this.samples.push({ atMs, value })
    while (this.samples.length > this.maxSamples || (this.samples.length > 2 && atMs - this.samples[0].atMs > this.windowMs)) this.samples.shift()
  }

  /** Units per second over the window; undefined until two samples span some time. */
  perSecond (): number | undefined {
    if (this.samples.length < 2) return undefined
    const first = this.samples[0]
    const last = this.samples[this.samples.length - 1]
    if (last.atMs <= first.atMs) return undefined
    return (last.value - first.value) * 1000 / (last.atMs - first.atMs)
  }

  /** Time until `target` at the current rate; undefined when not moving toward it. */
  etaMs (target: number): number | undefined {
    const rate = this.perSecond()
    const last = this.samples.at(-1)
    if (rate === undefined || last === undefined || rate <= 0) return undefined
    return Math.max(0, (target - last.value) / rate * 1000)
  }
}
