/*
 * K2 local stack: Iceberg's REST catalog test server, bound to one address.
 *
 * org.apache.iceberg.rest.RESTCatalogServer (shipped as the runnable jar
 * org.apache.iceberg:iceberg-open-api) always listens on every interface. This
 * launcher builds the same catalog and servlet but binds Jetty to the host given by
 * -Dk2.rest.host (default 127.0.0.1) and the port given by -Dk2.rest.port (default 8181).
 * It lives in the same package to reach the server's package-private helpers, so it
 * must be compiled against, and run with, the same jar (deploy/local/stack.py does both).
 *
 * The backing catalog is configured like the upstream server: CATALOG_* environment
 * variables become catalog properties (CATALOG_S3_ENDPOINT -> s3.endpoint,
 * CATALOG_IO__IMPL -> io-impl).
 */
package org.apache.iceberg.rest;

import java.util.HashMap;
import java.util.Map;
import org.apache.hadoop.conf.Configuration;
import org.apache.iceberg.CatalogProperties;
import org.apache.iceberg.CatalogUtil;
import org.apache.iceberg.catalog.Catalog;
import org.apache.iceberg.jdbc.JdbcCatalog;
import org.eclipse.jetty.server.Server;
import org.eclipse.jetty.server.ServerConnector;
import org.eclipse.jetty.server.handler.gzip.GzipHandler;
import org.eclipse.jetty.servlet.ServletContextHandler;
import org.eclipse.jetty.servlet.ServletHolder;

public final class LoopbackRESTCatalogServer {
  private LoopbackRESTCatalogServer() {}

  public static void main(String[] args) throws Exception {
    String host = System.getProperty("k2.rest.host", "127.0.0.1");
    int port = Integer.parseInt(System.getProperty("k2.rest.port", "8181"));

    Map<String, String> props = new HashMap<>(RCKUtils.environmentCatalogConfig());
    props.putIfAbsent(CatalogProperties.CATALOG_IMPL, JdbcCatalog.class.getName());
    props.putIfAbsent(CatalogProperties.URI, "jdbc:sqlite:file::memory:?cache=shared");
    props.putIfAbsent("jdbc.schema-version", "V1");
    if (!props.containsKey(CatalogProperties.WAREHOUSE_LOCATION)) {
      throw new IllegalArgumentException("CATALOG_WAREHOUSE is not set");
    }
    String name = props.getOrDefault(RESTCatalogServer.CATALOG_NAME, "rest_backend");
    Catalog catalog = CatalogUtil.buildIcebergCatalog(name, props, new Configuration());

    RESTCatalogAdapter adapter =
        new RESTServerCatalogAdapter(new RESTCatalogServer.CatalogContext(catalog, props));
    ServletContextHandler context = new ServletContextHandler(ServletContextHandler.NO_SESSIONS);
    context.addServlet(new ServletHolder(new RESTCatalogServlet(adapter)), "/*");
    context.insertHandler(new GzipHandler());

    Server server = new Server();
    ServerConnector connector = new ServerConnector(server);
    connector.setHost(host);
    connector.setPort(port);
    server.addConnector(connector);
    server.setHandler(context);
    server.setStopAtShutdown(true);
    server.start();
    System.out.println("K2 REST catalog listening on http://" + host + ":" + port);
    server.join();
  }
}
