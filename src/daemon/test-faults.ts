// Test-only seam for hostile-peer tests with real daemons: a module preloaded with `node --import`
// (test/helpers/daemon-faults.ts) registers a layer over the stores this daemon serves to peers, under a
// process-global symbol. src/ never imports test code, and no config file, flag or RPC reaches this: the only
// way in is code loaded into the process. Even so the daemon refuses to start with a layer registered unless
// VMTHUNDERD_TEST_FAULTS=1 is set, so a stray preload cannot make a production agent serve bad data.

import type { ServedStore } from '../p2p/service.js'

export const SERVED_STORE_LAYER_KEY = Symbol.for('vmthunderd.test.servedStoreLayer')
export const TEST_FAULTS_ENV = 'VMTHUNDERD_TEST_FAULTS'

export type ServedStoreLayer = (next: ServedStore) => ServedStore

export class TestFaultsRefusedError extends Error {
  override name = 'TestFaultsRefusedError'
}

/** The registered layer (undefined: none, as in production); throws when one is registered without the gate. */
export function testServedStoreLayer (env: NodeJS.ProcessEnv = process.env): ServedStoreLayer | undefined {
  const layer = (globalThis as Record<symbol, unknown>)[SERVED_STORE_LAYER_KEY]
  if (layer === undefined) return undefined
  if (typeof layer !== 'function') throw new TestFaultsRefusedError('a test fault layer is registered but is not a function')
  if (env[TEST_FAULTS_ENV] !== '1') {
    throw new TestFaultsRefusedError(`a test fault layer is loaded into this process; refusing to serve peers through it unless ${TEST_FAULTS_ENV}=1`)
  }
  return layer as ServedStoreLayer
}
