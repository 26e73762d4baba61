// vmthunderd: the agent. `vmthunderd [--config FILE] [--data-dir DIR] [--socket PATH] [--nbd-socket PATH]
// [--listen MULTIADDR]... [--bootstrap MULTIADDR]... [--trust PUBKEY]... [--psk FILE]`. SIGTERM/SIGINT stop it.
// bin/entry.js calls main(): the module itself does nothing when loaded, so the packaged bundle can be
// loaded to make its V8 code cache (bin/load-bundle.js), which warmUp() fills with what start-up compiles.

import '../polyfill.js'
import { parseArgs } from 'node:util'
import { loadConfig, ConfigError } from '../config.js'
import { Daemon } from './daemon.js'
import { createLogger } from './logger.js'
import { peerLayerFactory } from './peers.js'

export { warmUp } from './warm-up.js'

const USAGE = `usage: vmthunderd [--config FILE] [--data-dir DIR] [--socket PATH] [--nbd-socket PATH]
                  [--listen MULTIADDR]... [--bootstrap MULTIADDR]... [--trust PUBKEY]... [--psk FILE] [--no-p2p]
                  [--allow-image-dir DIR]... (image.register exports files under these only)`

/** What the entry script may run at points of the agent's life (bin/v8-flags.js: V8 flags once started). */
export interface MainHooks {
  started?: () => void
  /** Stops the agent as SIGTERM does (warmUp runs it in-process). */
  signal?: AbortSignal
}

export async function main (argv: string[], hooks: MainHooks = {}): Promise<number> {
  let args
  try {
    args = parseArgs({
      args: argv,
      options: {
        config: { type: 'string' },
        'data-dir': { type: 'string' },
        socket: { type: 'string' },
        'nbd-socket': { type: 'string' },
        listen: { type: 'string', multiple: true },
        bootstrap: { type: 'string', multiple: true },
        trust: { type: 'string', multiple: true },
        psk: { type: 'string' },
        'allow-image-dir': { type: 'string', multiple: true },
        'no-p2p': { type: 'boolean' },
        help: { type: 'boolean', short: 'h' }
      },
      strict: true,
      allowPositionals: false
    }).values
  } catch (err) {
    process.stderr.write(`vmthunderd: ${(err as Error).message}\n${USAGE}\n`)
    return 2
  }
  if (args.help === true) {
    process.stdout.write(USAGE + '\n')
    return 0
  }
  let config
  try {
    config = await loadConfig(args.config, {
      dataDir: args['data-dir'],
      socket: args.socket,
      nbdSocket: args['nbd-socket'],
      listen: args.listen,
      bootstrap: args.bootstrap,
      trust: args.trust,
      psk: args.psk,
      allowImageDirs: args['allow-image-dir']
    })
    if (args['no-p2p'] === true) config.p2p.enabled = false
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`vmthunderd: ${err.message}\n`)
      return 2
    }
    throw err
  }
  const logger = createLogger(config.log.level)
  let daemon: Daemon
  try {
    daemon = await Daemon.start(config, { logger, peerLayer: peerLayerFactory })
  } catch (err) {
    logger.error('cannot start', { error: err })
    process.stderr.write(`vmthunderd: cannot start: ${(err as Error).message}\n`)
    // A configuration that contradicts the state on disk (an untrusted image in use): restarting cannot help.
    return err instanceof ConfigError ? 2 : 1
  }
  try {
    hooks.started?.()
  } catch (err) {
    logger.warn('start hook failed', { error: (err as Error).message })
  }
  // Whatever a client sends, the daemon stays up: an unexpected rejection is logged, not fatal.
  const onRejection = (reason: unknown): void => logger.error('unhandled rejection', { error: reason })
  process.on('unhandledRejection', onRejection)
  const stops: Array<[NodeJS.EventEmitter | AbortSignal, string, () => void]> = []
  await new Promise<void>(resolve => {
    const on = (target: NodeJS.EventEmitter | AbortSignal, event: string, reason: string): void => {
      const listener = (): void => { logger.info('signal received', { signal: reason }); resolve() }
      stops.push([target, event, listener])
      if (target instanceof AbortSignal) target.addEventListener(event, listener)
      else target.on(event, listener)
    }
    on(process, 'SIGTERM', 'SIGTERM')
    on(process, 'SIGINT', 'SIGINT')
    if (hooks.signal !== undefined) {
      on(hooks.signal, 'abort', 'abort')
      if (hooks.signal.aborted) resolve()
    }
  })
  // This run's listeners only: warmUp runs the agent twice in one process.
  for (const [target, event, listener] of stops) {
    if (target instanceof AbortSignal) target.removeEventListener(event, listener)
    else target.off(event, listener)
  }
  const forced = setTimeout(() => { logger.error('stop took too long; exiting'); process.exit(1) }, 20_000)
  forced.unref()
  await daemon.stop()
  clearTimeout(forced)
  process.off('unhandledRejection', onRejection)
  return 0
}
