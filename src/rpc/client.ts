// A small JSON-RPC client for the daemon's unix socket (used by vmthunderctl, the demo and tests).

import { createConnection } from 'node:net'
import { RpcError } from './errors.js'

export class RpcConnectError extends Error {
  override name = 'RpcConnectError'
}

export class RpcTimeoutError extends Error {
  override name = 'RpcTimeoutError'
}

export const DEFAULT_RPC_TIMEOUT_MS = 10 * 60_000
const MAX_RESPONSE_BYTES = 64 * 1024 * 1024

let nextId = 1

export interface CallOptions {
  signal?: AbortSignal
  timeoutMs?: number
}

/** Sends one request and resolves with its result, or rejects with RpcError carrying the daemon's code. */
export async function callRpc (socketPath: string, method: string, params: Record<string, unknown> = {}, options: CallOptions = {}): Promise<any> {
  const id = nextId++
  const line = JSON.stringify({ jsonrpc: '2.0', id, method, params }) + '\n'
  const response = await exchange(socketPath, line, options)
  if (response.error !== undefined) {
    throw new RpcError(String(response.error.message), Number(response.error.code), response.error.data)
  }
  return response.result
}

/** Sends raw bytes and resolves with the first response line parsed (for tests of bad input, too). */
export async function exchange (socketPath: string, payload: string | Uint8Array, options: CallOptions = {}): Promise<any> {
  const signal = AbortSignal.any([
    options.signal ?? new AbortController().signal,
    AbortSignal.timeout(options.timeoutMs ?? DEFAULT_RPC_TIMEOUT_MS)
  ])
  return await new Promise((resolve, reject) => {
    const socket = createConnection(socketPath)
    const chunks: Buffer[] = []
    let size = 0
    let settled = false
    const finish = (err: Error | undefined, value?: unknown): void => {
      if (settled) return
      settled = true
      signal.removeEventListener('abort', onAbort)
      socket.destroy()
      if (err !== undefined) reject(err)
      else resolve(value)
    }
    const onAbort = (): void => {
      const reason = signal.reason as Error | undefined
      finish(reason?.name === 'TimeoutError' ? new RpcTimeoutError(`no answer from ${socketPath} in time`) : (reason ?? new Error('aborted')))
    }
    if (signal.aborted) { onAbort(); return }
    signal.addEventListener('abort', onAbort, { once: true })
    socket.on('connect', () => socket.write(payload))
    socket.on('error', err => {
      const code = (err as NodeJS.ErrnoException).code
      finish(code === 'ENOENT' || code === 'ECONNREFUSED' || code === 'EACCES'
        ? new RpcConnectError(`cannot connect to vmthunderd at ${socketPath} (${code}): is it running?`)
        : err)
    })
    socket.on('data', (chunk: Buffer) => {
      chunks.push(chunk)
      size += chunk.length
      if (size > MAX_RESPONSE_BYTES) { finish(new Error('response too large')); return }
      if (chunk.includes(10)) {
        const text = Buffer.concat(chunks).toString('utf8')
        const line = text.slice(0, text.indexOf('\n'))
        try {
          finish(undefined, JSON.parse(line))
        } catch (err) {
          finish(new Error(`daemon sent a line that is not JSON: ${(err as Error).message}`))
        }
      }
    })
    socket.on('close', () => finish(new RpcConnectError(`vmthunderd at ${socketPath} closed the connection without an answer`)))
  })
}
