// `vmthunderctl wait-ready`: returns once the daemon's sockets answer: the JSON-RPC socket replies to
// node.status and the NBD socket sends its greeting. systemd's ExecStartPost runs it, so the unit turns active
// only when a hypervisor can use the agent (Node cannot send sd_notify's unix datagram by itself).

import { createConnection } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import { callRpc, RpcConnectError } from '../rpc/client.js'
import type { NodeStatus } from '../rpc/types.js'

export class NotReadyError extends Error {
  override name = 'NotReadyError'
}

const RETRY_MS = 100
const NBD_MAGIC = Buffer.from('NBDMAGIC')

export async function waitReady (socket: string, options: { timeoutMs: number, signal?: AbortSignal }): Promise<NodeStatus> {
  const deadline = AbortSignal.any([AbortSignal.timeout(options.timeoutMs), ...(options.signal === undefined ? [] : [options.signal])])
  let status: NodeStatus | undefined
  let last = 'no answer'
  // Bounded by the deadline: a refused or missing socket is the daemon still starting.
  while (status === undefined) {
    if (deadline.aborted) throw new NotReadyError(`vmthunderd at ${socket} not ready in ${options.timeoutMs} ms: ${last}`)
    try {
      status = await callRpc(socket, 'node.status', {}, { signal: deadline }) as NodeStatus
    } catch (err) {
      if (!(err instanceof RpcConnectError) && (err as Error).name !== 'AbortError' && (err as Error).name !== 'TimeoutError') throw err
      last = (err as Error).message
      await sleep(RETRY_MS, undefined, { signal: deadline }).catch(() => {})
    }
  }
  await nbdGreeting(status.nbdSocket, deadline)
  return status
}

/** Connects to the NBD socket and checks the server's first 8 bytes, then hangs up. */
async function nbdGreeting (path: string, signal: AbortSignal): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const sock = createConnection(path)
    let got = Buffer.alloc(0)
    const done = (err?: Error): void => {
      signal.removeEventListener('abort', onAbort)
      sock.destroy()
      if (err === undefined) resolve()
      else reject(err)
    }
    const onAbort = (): void => done(new NotReadyError(`NBD socket ${path} sent no greeting in time`))
    signal.addEventListener('abort', onAbort, { once: true })
    sock.on('error', err => done(new NotReadyError(`NBD socket ${path}: ${err.message}`)))
    sock.on('data', (chunk: Buffer) => {
      got = Buffer.concat([got, chunk])
      if (got.length < NBD_MAGIC.length) return
      done(got.subarray(0, NBD_MAGIC.length).equals(NBD_MAGIC) ? undefined : new NotReadyError(`NBD socket ${path} did not greet with NBDMAGIC`))
    })
  })
}
