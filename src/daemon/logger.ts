// The daemon's logger: one JSON object per line on stderr, filtered by level. Every layer takes the narrow
// { debug?, info, warn, error } shape, so tests inject their own.

export type LogLevel = 'debug' | 'info' | 'warn' | 'error' | 'silent'

export interface DaemonLogger {
  debug: (message: string, fields?: Record<string, unknown>) => void
  info: (message: string, fields?: Record<string, unknown>) => void
  warn: (message: string, fields?: Record<string, unknown>) => void
  error: (message: string, fields?: Record<string, unknown>) => void
  child: (component: string) => DaemonLogger
}

const RANK: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40, silent: 100 }

export function createLogger (level: LogLevel, component = 'vmthunderd', write: (line: string) => void = line => process.stderr.write(line)): DaemonLogger {
  const emit = (at: Exclude<LogLevel, 'silent'>) => (message: string, fields?: Record<string, unknown>): void => {
    if (RANK[at] < RANK[level]) return
    let text: string
    try {
      text = JSON.stringify({ t: new Date().toISOString(), level: at, component, message, ...fields }, (_k, v: unknown) =>
        v instanceof Error ? `${v.name}: ${v.message}` : typeof v === 'bigint' ? v.toString() : v)
    } catch {
      text = JSON.stringify({ level: at, component, message })
    }
    write(text + '\n')
  }
  return {
    debug: emit('debug'),
    info: emit('info'),
    warn: emit('warn'),
    error: emit('error'),
    child: (name: string) => createLogger(level, `${component}.${name}`, write)
  }
}
