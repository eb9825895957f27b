"""covidct.report"""
