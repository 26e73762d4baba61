// Errors by class for the metrics: a logger that counts every warn/error line carrying an Error, by the
// error's `name` (each condition has its own class) and the component that logged it. No hot-path cost:
// it runs only where the daemon already logs.

import type { DaemonLogger } from '../daemon/logger.js'

/** At most this many distinct (class, component) pairs: a label set must stay bounded. */
export const MAX_ERROR_SERIES = 256

export class ErrorCounts {
  private readonly counts = new Map<string, { errorClass: string, component: string, level: string, count: number }>()

  note (errorClass: string, component: string, level: string): void {
    const key = `${errorClass}\0${component}\0${level}`
    let entry = this.counts.get(key)
    if (entry === undefined) {
      if (this.counts.size >= MAX_ERROR_SERIES) entry = this.other(level)
      else this.counts.set(key, entry = { errorClass, component, level, count: 0 })
    }
    entry.count++
  }

  entries (): Array<{ errorClass: string, component: string, level: string, count: number }> {
    return [...this.counts.values()]
  }

  private other (level: string): { errorClass: string, component: string, level: string, count: number } {
    const key = `Other\0other\0${level}`
    let entry = this.counts.get(key)
    if (entry === undefined) this.counts.set(key, entry = { errorClass: 'Other', component: 'other', level, count: 0 })
    return entry
  }
}

export function countingLogger (logger: DaemonLogger, counts: ErrorCounts, component = 'vmthunderd'): DaemonLogger {
  const counted = (level: 'warn' | 'error') => (message: string, fields?: Record<string, unknown>): void => {
    const error = fields?.error
    if (error instanceof Error) counts.note(error.name, component, level)
    else if (level === 'error') counts.note('UnnamedError', component, level)
    logger[level](message, fields)
  }
  return {
    debug: (m, f) => logger.debug(m, f),
    info: (m, f) => logger.info(m, f),
    warn: counted('warn'),
    error: counted('error'),
    child: (name: string) => countingLogger(logger.child(name), counts, `${component}.${name}`)
  }
}
