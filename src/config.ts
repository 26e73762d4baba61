// Loads the daemon's config: defaults, then the config file, then command-line flags.

import { readFile } from 'node:fs/promises'
import { dirname, join, resolve } from 'node:path'
import { configFileSchema, type ConfigFile } from '../config/schema.js'
import { defaultConfig, type Config } from '../config/defaults.js'

export class ConfigError extends Error {
  override name = 'ConfigError'
}

export interface ConfigOverrides {
  dataDir?: string
  socket?: string
  nbdSocket?: string
  listen?: string[]
  bootstrap?: string[]
  trust?: string[]
  psk?: string
  /** More image directories (vmthunderd --allow-image-dir). */
  allowImageDirs?: string[]
}

/** Validates a parsed config file; throws ConfigError naming the field. */
export function parseConfigFile (value: unknown, origin = 'config'): ConfigFile {
  const result = configFileSchema.safeParse(value)
  if (!result.success) {
    const issue = result.error.issues[0]
    const field = issue.path.join('.')
    const keys = issue.code === 'unrecognized_keys' ? ` (${(issue as { keys: string[] }).keys.map(k => field === '' ? k : `${field}.${k}`).join(', ')})` : ''
    throw new ConfigError(`${origin}: ${field === '' ? '' : `field '${field}': `}${issue.message}${keys}`)
  }
  return result.data
}

export async function loadConfig (file: string | undefined, overrides: ConfigOverrides = {}): Promise<Config> {
  let fromFile: ConfigFile = {}
  if (file !== undefined) {
    let text: string
    try {
      text = await readFile(file, 'utf8')
    } catch (err) {
      throw new ConfigError(`cannot read config file ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`)
    }
    let json: unknown
    try {
      json = JSON.parse(text)
    } catch (err) {
      throw new ConfigError(`config file ${file} is not valid JSON: ${(err as Error).message}`)
    }
    fromFile = parseConfigFile(json, file)
  }
  return mergeConfig(fromFile, overrides)
}

export function mergeConfig (fromFile: ConfigFile, overrides: ConfigOverrides = {}): Config {
  const config = defaultConfig()
  config.dataDir = resolve(overrides.dataDir ?? fromFile.dataDir ?? config.dataDir)
  config.socket = resolve(overrides.socket ?? fromFile.socket ?? config.socket)
  config.instancesDir = resolve(fromFile.instancesDir ?? join(config.dataDir, 'instances'))
  config.blockSizeBytes = fromFile.blockSizeBytes ?? config.blockSizeBytes
  Object.assign(config.nbd, fromFile.nbd)
  // Unless set, the NBD socket sits beside the RPC socket (the defaults: both in /run/vmthunder).
  config.nbd.socket = overrides.nbdSocket ?? fromFile.nbd?.socket ?? join(dirname(config.socket), 'nbd.sock')
  config.nbd.socket = resolve(config.nbd.socket)
  Object.assign(config.rpc, fromFile.rpc)
  Object.assign(config.cache, fromFile.cache)
  config.images.allowedDirs = [...(fromFile.images?.allowedDirs ?? []), ...(overrides.allowImageDirs ?? [])].map(d => resolve(d))
  Object.assign(config.p2p, fromFile.p2p)
  Object.assign(config.prefetch, fromFile.prefetch)
  Object.assign(config.log, fromFile.log)
  Object.assign(config.metrics, fromFile.metrics)
  if (overrides.listen !== undefined && overrides.listen.length > 0) config.p2p.listen = overrides.listen
  if (overrides.bootstrap !== undefined && overrides.bootstrap.length > 0) config.p2p.bootstrap = overrides.bootstrap
  if (overrides.trust !== undefined && overrides.trust.length > 0) config.p2p.trust = [...config.p2p.trust, ...overrides.trust]
  if (overrides.psk !== undefined) config.p2p.psk = overrides.psk
  return config
}
