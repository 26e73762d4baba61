// The packaged daemon's V8 code cache holds what was compiled when it was written (bin/load-bundle.js). Loading
// the bundle compiles only its modules' top-level code: every function start-up then runs was compiled at each
// start. warmUp() runs a real start-up in this process, a restart over a data dir with one registered image
// and p2p on (loopback), and calls `ready` once the agent has started, before it stops: the cache made there
// holds those functions too.

import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { callRpc } from '../rpc/client.js'
import { main } from './main.js'

export class WarmUpError extends Error {
  override name = 'WarmUpError'
}

/** A few blocks, one of them zero, so that loading its manifest runs the paths a real image's does. */
const IMAGE_BLOCKS = 4
const BLOCK_SIZE_BYTES = 64 * 1024

export interface WarmUpOptions {
  signal: AbortSignal
  /** Called once the agent has restarted (it is then stopped). */
  ready: () => void
}

export async function warmUp (options: WarmUpOptions): Promise<void> {
  const { signal } = options
  signal.throwIfAborted()
  const dir = await mkdtemp(join(tmpdir(), 'vmthunderd-warm-'))
  try {
    const image = join(dir, 'warm.raw')
    const bytes = Buffer.alloc(IMAGE_BLOCKS * BLOCK_SIZE_BYTES)
    for (let i = BLOCK_SIZE_BYTES; i < bytes.length; i++) bytes[i] = i % 251
    await writeFile(image, bytes)
    const config = join(dir, 'config.json')
    await writeFile(config, JSON.stringify({ log: { level: 'silent' }, blockSizeBytes: BLOCK_SIZE_BYTES }))
    const socket = join(dir, 'ctl.sock')
    const argv = ['--config', config, '--data-dir', join(dir, 'data'), '--socket', socket, '--listen', '/ip4/127.0.0.1/tcp/0',
      '--allow-image-dir', dir]
    // First start: register the image, as an operator would.
    await run(argv, signal, async () => { await callRpc(socket, 'image.register', { id: 'warm', path: image }, { signal }) })
    // The restart is what the cache is for.
    await run(argv, signal, async () => { options.ready() })
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
}

/** Runs the agent until `whileUp` has run once it started; then stops it. */
async function run (argv: string[], signal: AbortSignal, whileUp: () => Promise<void>): Promise<void> {
  const stop = new AbortController()
  const abort = (): void => stop.abort()
  signal.addEventListener('abort', abort, { once: true })
  let failed: unknown
  try {
    const code = await main(argv, {
      signal: stop.signal,
      started: () => { whileUp().catch(err => { failed = err }).finally(abort) }
    })
    if (failed !== undefined) throw failed
    signal.throwIfAborted()
    if (code !== 0) throw new WarmUpError(`the agent exited with ${code}`)
  } finally {
    signal.removeEventListener('abort', abort)
  }
}
