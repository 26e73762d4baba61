// The narrow logger the NBD server writes to. Injected; the default prints warnings and errors to stderr.

export type NbdLogFields = Record<string, unknown>

export interface NbdLogger {
  debug: (message: string, fields?: NbdLogFields) => void
  info: (message: string, fields?: NbdLogFields) => void
  warn: (message: string, fields?: NbdLogFields) => void
  error: (message: string, fields?: NbdLogFields) => void
}

function toStderr (level: string): (message: string, fields?: NbdLogFields) => void {
  return (message, fields) => {
    process.stderr.write(`nbd ${level}: ${message}${fields === undefined ? '' : ' ' + safeJson(fields)}\n`)
  }
}

function safeJson (fields: NbdLogFields): string {
  try {
    return JSON.stringify(fields, (_k, v: unknown) => v instanceof Error ? `${v.name}: ${v.message}` : v)
  } catch {
    return '[unserializable]'
  }
}

export const stderrLogger: NbdLogger = {
  debug: () => {},
  info: () => {},
  warn: toStderr('warn'),
  error: toStderr('error')
}

export const silentLogger: NbdLogger = { debug: () => {}, info: () => {}, warn: () => {}, error: () => {} }
