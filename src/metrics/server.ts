// The metrics endpoint: plain HTTP on the operator's `metrics.listen` address (off by default), GET /metrics
// only. Bounded: few connections, short timeouts, no request body read.

import { createServer, type Server } from 'node:http'
import type { AgentMetrics } from './metrics.js'

export class MetricsListenError extends Error {
  override name = 'MetricsListenError'
}

const MAX_CONNECTIONS = 16
const REQUEST_TIMEOUT_MS = 10_000

/** "HOST:PORT" or "[V6]:PORT" -> host and port. */
export function parseListen (listen: string): { host: string, port: number } {
  const at = listen.lastIndexOf(':')
  const host = listen.slice(0, at).replace(/^\[|\]$/g, '')
  const port = Number(listen.slice(at + 1))
  if (at <= 0 || !Number.isInteger(port) || port < 0 || port > 65535) throw new MetricsListenError(`metrics.listen must be HOST:PORT, got '${listen}'`)
  return { host, port }
}

export interface MetricsServer {
  /** The bound address, "HOST:PORT" (the port is real when 0 was asked for). */
  address: string
  close: () => Promise<void>
}

export async function startMetricsServer (metrics: AgentMetrics, listen: string, onError: (message: string, fields: Record<string, unknown>) => void): Promise<MetricsServer> {
  const { host, port } = parseListen(listen)
  const server: Server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0]
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end()
      return
    }
    if (path !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('vmthunderd: metrics are at /metrics\n')
      return
    }
    metrics.render().then(text => {
      res.writeHead(200, { 'content-type': metrics.registry.contentType }).end(req.method === 'HEAD' ? undefined : text)
    }, (err: unknown) => {
      onError('metrics scrape failed', { error: err })
      res.writeHead(500, { 'content-type': 'text/plain' }).end('scrape failed\n')
    })
  })
  server.maxConnections = MAX_CONNECTIONS
  server.requestTimeout = REQUEST_TIMEOUT_MS
  server.headersTimeout = REQUEST_TIMEOUT_MS
  server.keepAliveTimeout = 5_000
  await new Promise<void>((resolve, reject) => {
    server.once('error', err => reject(new MetricsListenError(`cannot listen for metrics on ${listen}: ${err.message}`)))
    server.listen(port, host, resolve)
  })
  const bound = server.address()
  const address = typeof bound === 'object' && bound !== null ? `${bound.family === 'IPv6' ? `[${bound.address}]` : bound.address}:${bound.port}` : listen
  return {
    address,
    close: async () => {
      server.closeAllConnections()
      await new Promise<void>(resolve => server.close(() => resolve()))
    }
  }
}
