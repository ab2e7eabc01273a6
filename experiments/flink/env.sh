# Apache Flink 2.3 for the experiments: sourced by experiments/flink_compare.sh and
# experiments/flink_real_job.sh (run from the repository's root). It fetches Flink when missing and
# defines FLINK_CACHE, FLINK_LIB, FLINK_JVM_FLAGS and flink_compile.
#   env: FLINK_CACHE  where Flink jars and compiled classes live
#                     (default ~/.cache/threatflow-flink; never inside the repository)
#
# Flink comes from the `apache-flink-libraries` package on PyPI (Apache License 2.0; the PyFlink
# packaging of the official Flink distribution). Only flink-dist and the log4j jars are
# extracted into $FLINK_CACHE/lib.

FLINK_VERSION=2.3.0
FLINK_CACHE=${FLINK_CACHE:-$HOME/.cache/threatflow-flink}
FLINK_LIB=$FLINK_CACHE/lib

# --- Flink jars -----------------------------------------------------------------------------
if [ ! -f "$FLINK_LIB/flink-dist-$FLINK_VERSION.jar" ]; then
  echo "fetching apache-flink-libraries==$FLINK_VERSION from PyPI into $FLINK_CACHE" >&2
  mkdir -p "$FLINK_CACHE/download" "$FLINK_LIB"
  pip download "apache-flink-libraries==$FLINK_VERSION" --no-deps -d "$FLINK_CACHE/download" >&2
  pkg=$(ls "$FLINK_CACHE"/download/apache[-_]flink[-_]libraries-"$FLINK_VERSION"* | head -n 1)
  case "$pkg" in
    *.whl)      # wheel: pyflink/lib/*.jar
      unzip -j -o -q "$pkg" "pyflink/lib/flink-dist-*.jar" "pyflink/lib/log4j-*.jar" -d "$FLINK_LIB" ;;
    *.tar.gz)   # sdist: <dir>/deps/lib/*.jar
      tmp=$(mktemp -d "$FLINK_CACHE/extract.XXXXXX")
      tar -xzf "$pkg" -C "$tmp" --wildcards '*/deps/lib/flink-dist-*.jar' '*/deps/lib/log4j-*.jar'
      find "$tmp" -name '*.jar' -exec mv {} "$FLINK_LIB/" \;
      rm -rf "$tmp" ;;
    *) echo "unexpected download: $pkg" >&2; exit 1 ;;
  esac
  rm -f "$pkg"   # the package is ~330 MB; keep only the jars
fi

# log4j: warnings and errors to stderr, so stdout carries only the JSON lines
if [ ! -f "$FLINK_CACHE/log4j2.properties" ]; then
  cat > "$FLINK_CACHE/log4j2.properties" <<'EOF'
rootLogger.level = WARN
rootLogger.appenderRef.err.ref = err
appender.err.type = Console
appender.err.name = err
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = %d{HH:mm:ss,SSS} %-5p %c{1} - %m%n
# harmless in a local MiniCluster
logger.tokens.name = org.apache.flink.runtime.security.token.DefaultDelegationTokenManager
logger.tokens.level = ERROR
logger.web.name = org.apache.flink.runtime.webmonitor.WebMonitorUtils
logger.web.level = ERROR
EOF
fi

# Flink's defaults for env.java.opts.all (config.yaml in flink-dist), needed on Java 17.
FLINK_JVM_FLAGS=(
  -Xmx4g
  --add-exports=java.base/sun.net.util=ALL-UNNAMED
  --add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED
  --add-exports=java.security.jgss/sun.security.krb5=ALL-UNNAMED
  --add-opens=java.base/java.lang=ALL-UNNAMED
  --add-opens=java.base/java.net=ALL-UNNAMED
  --add-opens=java.base/java.io=ALL-UNNAMED
  --add-opens=java.base/java.nio=ALL-UNNAMED
  --add-opens=java.base/sun.nio.ch=ALL-UNNAMED
  --add-opens=java.base/java.lang.reflect=ALL-UNNAMED
  --add-opens=java.base/java.text=ALL-UNNAMED
  --add-opens=java.base/java.time=ALL-UNNAMED
  --add-opens=java.base/java.util=ALL-UNNAMED
  --add-opens=java.base/java.util.concurrent=ALL-UNNAMED
  --add-opens=java.base/java.util.concurrent.atomic=ALL-UNNAMED
  --add-opens=java.base/java.util.concurrent.locks=ALL-UNNAMED
  "-Dlog4j2.configurationFile=$FLINK_CACHE/log4j2.properties"
)

# flink_compile CLASSES SOURCE...: compile the sources into CLASSES when any is newer.
flink_compile() {
  local classes=$1; shift
  local stamp=$classes/.compiled
  for src in "$@"; do
    if [ ! -f "$stamp" ] || [ "$src" -nt "$stamp" ]; then
      mkdir -p "$classes"
      javac -cp "$FLINK_LIB/*" -d "$classes" "$@"
      touch "$stamp"
      return
    fi
  done
}
